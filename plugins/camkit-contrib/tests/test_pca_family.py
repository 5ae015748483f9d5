"""KPCA-CAM, FEM, Seg-Eigen-CAM and Eigen-CAM's ``center`` option against direct numpy
re-implementations of their formulas on a tiny CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import camkit
from camkit.errors import ConfigError, LayerError
from camkit.testing import tiny_inputs, tiny_model

LAYER = "features"


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_model(seed=3, num_classes=5, channels=6)


@pytest.fixture
def x() -> Tensor:
    return tiny_inputs(2, 16, seed=4)


def captured(model: torch.nn.Module, x: Tensor, targets: list[int] | None = None):
    """Activations and gradients of the target logit at ``features``, without camkit."""
    feats = model.features(x)
    scores = model.fc(model.pool(feats).flatten(1))
    target = scores.argmax(1) if targets is None else torch.tensor(targets)
    (grads,) = torch.autograd.grad(scores[torch.arange(x.shape[0]), target].sum(), feats)
    return feats.detach().double().numpy(), grads.double().numpy()


def layer_map(name: str, model: torch.nn.Module, x: Tensor, targets=None, **kw) -> np.ndarray:
    res = camkit.create(name, model, LAYER, **kw)(x, targets)
    return res.layer_maps[LAYER].double().numpy()


def rows_of(a: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h*w, C)."""
    return a.reshape(a.shape[0], -1).T


def signed_like_mean(projection: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return -projection if np.corrcoef(projection, rows.mean(1))[0, 1] < 0 else projection


def sigmoid_gram(z: np.ndarray, gamma: float) -> np.ndarray:
    return np.tanh(gamma * z @ z.T + 1.0)


def rbf_gram(z: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))


def poly_gram(z: np.ndarray, gamma: float) -> np.ndarray:
    return (gamma * z @ z.T + 1.0) ** 3


def linear_gram(z: np.ndarray, gamma: float) -> np.ndarray:
    return z @ z.T


def cosine_gram(z: np.ndarray, gamma: float) -> np.ndarray:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    return unit @ unit.T


GRAMS = {
    "sigmoid": sigmoid_gram,
    "rbf": rbf_gram,
    "poly": poly_gram,
    "linear": linear_gram,
    "cosine": cosine_gram,
}


@pytest.mark.parametrize("center", [False, True])
def test_eigencam_center_option(model, x, center):
    A, _ = captured(model, x)
    cam = layer_map("eigencam", model, x, center=center)
    for b in range(A.shape[0]):
        rows = rows_of(A[b])
        m = rows - rows.mean(0) if center else rows
        _, _, vt = np.linalg.svd(m)
        expected = signed_like_mean(m @ vt[0], rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b], expected, rtol=1e-4, atol=1e-5)


def test_eigencam_center_changes_the_map(model, x):
    # guards the test above against an option that is silently ignored
    assert not np.allclose(
        layer_map("eigencam", model, x), layer_map("eigencam", model, x, center=True), atol=1e-3
    )


@pytest.mark.parametrize("targets", [None, [2, 0]])
def test_eigengradcam_center_option(model, x, targets):
    A, g = captured(model, x, targets)
    cam = layer_map("eigengradcam", model, x, targets, center=True)
    for b in range(A.shape[0]):
        rows = rows_of(g[b] * A[b])
        m = rows - rows.mean(0)
        _, _, vt = np.linalg.svd(m)
        expected = signed_like_mean(m @ vt[0], rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", sorted(GRAMS))
@pytest.mark.parametrize("gamma", [None, 0.3])
def test_kpcacam_is_the_first_kernel_principal_component(model, x, kernel, gamma):
    A, _ = captured(model, x)
    cam = layer_map("kpcacam", model, x, kernel=kernel, gamma=gamma)
    for b in range(A.shape[0]):
        rows = rows_of(A[b])
        z = rows - rows.mean(0)
        n = z.shape[0]
        k = GRAMS[kernel](z, 1.0 / z.shape[1] if gamma is None else gamma)
        h = np.eye(n) - np.full((n, n), 1.0 / n)
        values, vectors = np.linalg.eigh(h @ k @ h)
        projection = vectors[:, -1] * np.sqrt(max(values[-1], 0.0))
        expected = signed_like_mean(projection, rows).reshape(A.shape[2:])
        np.testing.assert_allclose(cam[b], expected, rtol=1e-4, atol=1e-5)


def test_kpcacam_linear_kernel_is_centred_eigencam(model, x):
    np.testing.assert_allclose(
        layer_map("kpcacam", model, x, kernel="linear"),
        layer_map("eigencam", model, x, center=True),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("bad", [{"kernel": "laplace"}, {"gamma": 0.0}, {"gamma": -1.0}])
def test_kpcacam_rejects_bad_options(model, bad):
    with pytest.raises(ConfigError):
        camkit.create("kpcacam", model, LAYER, **bad)


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_fem_weights_are_the_share_above_k_sigma(model, x, k):
    acts, _ = captured(model, x)
    res = camkit.create("fem", model, LAYER, k=k)(x)
    mean = acts.mean((2, 3), keepdims=True)
    std = acts.std((2, 3), keepdims=True)
    weights = (acts > mean + k * std).mean((2, 3))
    expected = np.maximum((weights[:, :, None, None] * acts).sum(1), 0)
    np.testing.assert_allclose(res.weights[LAYER].double().numpy(), weights, atol=1e-7)
    np.testing.assert_allclose(res.layer_maps[LAYER].double().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("k", [2.0, 1.75])
def test_fem_refuses_a_grid_where_nothing_can_exceed_k_sigma(k):
    # a 2x2 grid (4 values) allows at most sqrt(3) = 1.73 standard deviations above the mean
    model = tiny_model(seed=3, num_classes=5, channels=6)
    x = tiny_inputs(1, 4, seed=4)
    with pytest.raises(LayerError, match=r"sqrt\(4 - 1\) = 1.73"):
        camkit.create("fem", model, LAYER, k=k)(x)
    assert camkit.create("fem", model, LAYER, k=1.7)(x).maps.shape == (1, 4, 4)


def test_fem_ignores_the_target(model, x):
    np.testing.assert_array_equal(
        layer_map("fem", model, x, [0, 1]), layer_map("fem", model, x, [4, 4])
    )


@pytest.mark.parametrize("targets", [None, [1, 3]])
def test_segeigencam_corrects_the_sign_by_the_extremes(model, x, targets):
    A, g = captured(model, x, targets)
    cam = layer_map("segeigencam", model, x, targets)
    for b in range(A.shape[0]):
        m = rows_of(np.abs(g[b]) * A[b])
        m = m - m.mean(0)
        _, _, vt = np.linalg.svd(m)
        p = m @ vt[0]
        p = -p if abs(p.min()) > abs(p.max()) else p
        np.testing.assert_allclose(
            cam[b], np.maximum(p, 0).reshape(A.shape[2:]), rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly"])
def test_kpca_keeps_the_variation_of_tiny_activations(kernel):
    # Untrained layers can output values near 1e-8. The kernel then varies by ~1e-17 around
    # its constant part (tanh(1), 1, 1), below float64's resolution of that constant; to first
    # order it is an affine function of the linear kernel (of the squared distances for rbf,
    # which double centring turns into the linear Gram matrix), so the map must be the linear
    # kernel's, not zeros or rounding noise.
    from camkit_contrib.kpca import kernel_first_component

    feats = 1e-8 * torch.randn(2, 6, 4, 4, generator=torch.Generator().manual_seed(0)).double()
    tiny = kernel_first_component(feats, kernel, 0.2).flatten(1)
    linear = kernel_first_component(feats, "linear").flatten(1)
    assert bool((tiny.abs().amax(1) > 0).all())
    for ours, expected in zip(tiny, linear):
        assert abs(np.corrcoef(ours.numpy(), expected.numpy())[0, 1]) > 0.9999
