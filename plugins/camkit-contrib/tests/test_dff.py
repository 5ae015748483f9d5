"""Deep Feature Factorization: the NMF solver against a NumPy re-implementation of the
multiplicative updates and against scikit-learn, the result against the activations it
factorizes, and (slow) against pytorch-grad-cam's ``DeepFeatureFactorization``."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from camkit_contrib import DeepFeatureFactorization, DFFResult, deep_feature_factorization
from camkit_contrib.dff import nmf
from torch import Tensor

import camkit
from camkit.errors import ConfigError


def mu_numpy(x: np.ndarray, w: np.ndarray, h: np.ndarray, steps: int, eps: float = 1e-10):
    """Lee & Seung's multiplicative updates for ||X - WH||_F^2, written out."""
    w, h = w.copy(), h.copy()
    for _ in range(steps):
        h = h * (w.T @ x) / (w.T @ w @ h + eps)
        w = w * (x @ h.T) / (w @ h @ h.T + eps)
    return w, h


def relative_error(x: np.ndarray, w: np.ndarray, h: np.ndarray) -> float:
    return float(np.linalg.norm(x - w @ h) / np.linalg.norm(x))


def best_matched_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-concept Pearson r of ``a`` and ``b`` (``(k, n)`` rows) under the
    concept permutation that maximizes it."""
    k = a.shape[0]
    r = np.corrcoef(a, b)[:k, k:]
    return max(min(r[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))


def test_nmf_is_the_multiplicative_update():
    gen = np.random.default_rng(0)
    x = gen.random((12, 30))
    w0, h0 = gen.random((12, 3)), gen.random((3, 30))
    w, h, steps = nmf(
        torch.from_numpy(x),
        3,
        init=(torch.from_numpy(w0), torch.from_numpy(h0)),
        max_iter=40,
        tol=0,
    )
    ew, eh = mu_numpy(x, w0, h0, 40)
    assert steps == 40
    np.testing.assert_allclose(w.numpy(), ew, rtol=1e-9)
    np.testing.assert_allclose(h.numpy(), eh, rtol=1e-9)


def test_nmf_recovers_an_exact_factorization():
    # Three parts with disjoint supports: the factorization is unique up to permutation.
    gen = np.random.default_rng(1)
    w0 = gen.random((20, 3)) + 0.1
    h0 = np.zeros((3, 60))
    for j in range(3):
        h0[j, 20 * j : 20 * (j + 1)] = gen.random(20) + 0.5
    x = w0 @ h0
    w, h, _ = nmf(torch.from_numpy(x), 3, max_iter=3000, tol=1e-9)
    assert relative_error(x, w.numpy(), h.numpy()) < 1e-3
    # Multiplicative updates reach the zeros only asymptotically: every column is assigned to
    # its part, and the parts correlate closely.
    parts = h.numpy().argmax(0)
    assert all(len(set(parts[20 * j : 20 * (j + 1)])) == 1 for j in range(3))
    assert len(set(parts)) == 3
    assert best_matched_correlation(h.numpy(), h0) > 0.97


def test_nmf_is_as_good_as_scikit_learn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    gen = np.random.default_rng(2)
    x = np.abs(gen.standard_normal((64, 3)) @ gen.standard_normal((3, 200))) + 0.1 * gen.random(
        (64, 200)
    )
    model = decomposition.NMF(n_components=3, init="random", random_state=0, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sw = model.fit_transform(x)
    w, h, _ = nmf(torch.from_numpy(x), 3, max_iter=2000, tol=1e-7)
    ours, theirs = relative_error(x, w.numpy(), h.numpy()), relative_error(x, sw, model.components_)
    assert ours <= theirs + 5e-3
    assert best_matched_correlation(h.numpy(), model.components_) > 0.99


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def hooked(model: torch.nn.Module, layer: torch.nn.Module, x: Tensor) -> Tensor:
    out: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: out.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[0]


def test_dff_factorizes_the_layer_activations(resnet, images):
    res = deep_feature_factorization(resnet, "layer3", images, 3, classifier=None)
    acts = hooked(resnet, resnet.layer3, images)  # (B, C, h, w)
    c = acts.shape[1]
    data = acts.transpose(0, 1).reshape(c, -1)
    offset = data.min(1, keepdim=True).values
    coeffs = res.layer_maps.transpose(0, 1).reshape(3, -1)
    basis = res.concepts.T - offset
    assert bool((basis >= -1e-6).all()) and bool((coeffs >= 0).all())
    error = torch.linalg.matrix_norm(data - offset - basis @ coeffs) / torch.linalg.matrix_norm(
        data - offset
    )
    assert float(error) == pytest.approx(res.reconstruction_error, rel=1e-4)
    assert res.reconstruction_error < 0.5
    # maps: each concept's coefficients per image, min-max normalized, resized to the input
    lo = res.layer_maps.amin((2, 3), keepdim=True)
    hi = res.layer_maps.amax((2, 3), keepdim=True)
    norm = (res.layer_maps - lo) / (hi - lo)
    up = F.interpolate(norm, size=(96, 96), mode="bilinear", align_corners=False)
    up = (up - up.amin((2, 3), keepdim=True)) / (
        up.amax((2, 3), keepdim=True) - up.amin((2, 3), keepdim=True)
    )
    torch.testing.assert_close(res.maps, up, atol=1e-5, rtol=1e-5)
    assert res.maps.shape == (2, 3, 96, 96) and res.layer == "layer3"
    assert res.concept_scores is None


def test_dff_scores_concepts_with_the_classifier(resnet, images):
    dff = DeepFeatureFactorization(resnet, "layer4", n_components=4, classifier=resnet.fc)
    res = dff(images)
    assert res.concept_scores is not None
    torch.testing.assert_close(res.concept_scores, resnet.fc(res.concepts).detach())
    assert res.concept_scores.shape == (4, 10)


def test_dff_leaves_the_model_as_it_was(resnet, images):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    deep_feature_factorization(resnet, resnet.layer4, images, 2)
    assert all(not m._forward_hooks for m in resnet.modules())
    assert not resnet.training
    for k, v in resnet.state_dict().items():
        assert torch.equal(v, before[k])


def test_dff_says_when_the_classifier_does_not_fit_the_layer(resnet, images):
    dff = DeepFeatureFactorization(resnet, "layer3", n_components=2, classifier=resnet.fc)
    with pytest.raises(ConfigError, match=r"\(2, 256\) concept vectors of layer 'layer3'"):
        dff(images)


@pytest.mark.parametrize(
    "kwargs",
    [{"n_components": 0}, {"n_components": 2.5}, {"max_iter": 0}, {"classifier": 3}],
)
def test_dff_rejects_bad_arguments(resnet, kwargs):
    with pytest.raises(ConfigError):
        DeepFeatureFactorization(resnet, "layer4", **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_dff_matches_grad_cam_up_to_concept_order(resnet, images, layer):
    ff = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning
        concepts, maps = ff.DeepFeatureFactorization(resnet, getattr(resnet, layer))(images, 3)
    theirs = np.stack(maps).transpose(1, 0, 2, 3).reshape(3, -1)
    res = deep_feature_factorization(resnet, layer, images, 3, max_iter=2000, tol=1e-6)
    ours = res.maps.transpose(0, 1).reshape(3, -1).double().numpy()
    assert best_matched_correlation(ours, theirs) >= 0.99
    assert concepts.shape == tuple(res.concepts.T.shape)


def test_dff_is_listed_as_an_explainer_that_loads_and_runs(resnet, images):
    """The spec camkit-contrib publishes names the objects users get, and its example runs."""
    import camkit_contrib

    info = camkit.explainer_info("dff")
    assert info.spec in camkit_contrib.EXPLAINERS
    assert info.distribution == "camkit-contrib"
    assert info.load() is DeepFeatureFactorization
    assert info.load("function") is deep_feature_factorization
    assert info.load("returns") is DFFResult
    namespace = {"DeepFeatureFactorization": info.load(), "model": resnet, "images": images}
    result = eval(info.spec.example, namespace)
    assert isinstance(result, DFFResult) and result.maps.shape[:2] == (len(images), 4)
