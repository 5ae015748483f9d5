"""The Deep Feature Factorization shim against pytorch-grad-cam 1.5.7's
``pytorch_grad_cam.feature_factorization`` (maps up to concept order: NMF is not unique and
the two solvers differ, see docs/migrating.md)."""

from __future__ import annotations

import itertools
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from compat_helpers import needs_contrib, needs_grad_cam
from PIL import Image

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat.pytorch_grad_cam import feature_factorization as shim_ff
from camkit.compat.pytorch_grad_cam.base_cam import scale

pytestmark = needs_contrib


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def matched_correlation(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Smallest per-concept Pearson r under the best concept permutation; ``(B, k, H, W)``."""
    k = ours.shape[1]
    a = ours.transpose(1, 0, 2, 3).reshape(k, -1)
    b = theirs.transpose(1, 0, 2, 3).reshape(k, -1)
    r = np.corrcoef(a, b)[:k, k:]
    return max(min(r[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))


def test_the_shim_is_exported_and_returns_the_original_shapes(resnet, images):
    assert shim.DeepFeatureFactorization is shim_ff.DeepFeatureFactorization
    with shim.DeepFeatureFactorization(resnet, resnet.layer4, None, resnet.fc) as dff:
        concepts, maps, outputs = dff(images, n_components=3)
    assert concepts.shape == (512, 3) and outputs.shape == (3, 10)
    assert len(maps) == 2 and maps[0].shape == (3, 96, 96) and maps[0].dtype == np.float32
    torch.testing.assert_close(
        torch.from_numpy(outputs), resnet.fc(torch.from_numpy(concepts.T)).detach()
    )
    assert all(float(m.min()) >= 0.0 and 0.5 < float(m.max()) <= 1.0 for m in maps[0])
    assert all(not m._forward_hooks for m in resnet.modules())


def test_the_shims_maps_are_the_factorization_scaled_then_resized(resnet, images):
    concepts, maps = shim.DeepFeatureFactorization(resnet, resnet.layer3)(images, 3)
    hooked: list[torch.Tensor] = []
    handle = resnet.layer3.register_forward_hook(lambda _m, _i, o: hooked.append(o))
    with torch.no_grad():
        resnet(images)
    handle.remove()
    c2, explanations = shim_ff.dff(hooked[0].numpy(), 3)  # the same solver, seed and data
    np.testing.assert_allclose(concepts, c2, rtol=1e-4, atol=1e-5)
    e = torch.from_numpy(explanations).reshape(6, *explanations.shape[2:])
    up = torch.nn.functional.interpolate(scale(e)[:, None], (96, 96), mode="bilinear")
    np.testing.assert_allclose(np.stack(maps), up.reshape(2, 3, 96, 96).numpy(), atol=1e-4)


@needs_grad_cam
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_dff_matches_the_original_up_to_concept_order(resnet, images, layer):
    ff = pytest.importorskip("pytorch_grad_cam.feature_factorization.deep_feature_factorization")
    module = getattr(resnet, layer)
    head = resnet.fc if layer == "layer4" else torch.nn.Linear(256, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning
        theirs = ff.DeepFeatureFactorization(resnet, module, computation_on_concepts=head)(
            images, 3
        )
        acts = np.random.default_rng(0).random((2, 16, 4, 4)).astype(np.float32)
        their_concepts, their_expl = ff.dff(acts.copy(), 3)
    ours = shim.DeepFeatureFactorization(resnet, module, computation_on_concepts=head)(images, 3)
    assert [np.shape(t) for t in ours[:1]] == [np.shape(t) for t in theirs[:1]]
    # the maps at the input size (the original resizes with OpenCV)
    assert matched_correlation(np.stack(ours[1]), np.stack(theirs[1])) >= 0.99
    # the explanations at the layer's resolution, from the same activations
    hooked: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, o: hooked.append(o))
    with torch.no_grad():
        resnet(images)
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, their_raw = ff.dff(hooked[0].numpy().copy(), 3)
    _, our_raw = shim_ff.dff(hooked[0].numpy(), 3)
    assert matched_correlation(our_raw, their_raw) >= 0.999
    assert ours[2].shape == theirs[2].shape
    concept_out = head(torch.from_numpy(ours[0].T.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(ours[2], concept_out, rtol=1e-4, atol=1e-5)
    # the bare function: the same shapes, and a factorization as good as scikit-learn's
    concepts, expl = shim_ff.dff(acts, 3)
    assert concepts.shape == their_concepts.shape and expl.shape == their_expl.shape

    def error(c: np.ndarray, e: np.ndarray) -> float:
        data = acts.transpose(1, 0, 2, 3).reshape(16, -1)
        offset = data.min(1, keepdims=True)
        recon = (c - offset) @ e.transpose(1, 0, 2, 3).reshape(3, -1)
        return float(np.linalg.norm(data - offset - recon) / np.linalg.norm(data - offset))

    assert error(concepts, expl) <= error(their_concepts, their_expl) + 0.01


def test_run_dff_on_image_shows_image_concepts_and_legend(resnet, images):
    labels = {i: f"class {i}" for i in range(10)}
    wrapped = torch.nn.Sequential(resnet)
    wrapped.config = SimpleNamespace(id2label=labels)  # type: ignore[attr-defined]
    pixels = (images[0].permute(1, 2, 0).clamp(-2, 2) + 2) / 4 * 255
    img = Image.fromarray(pixels.numpy().astype(np.uint8))
    out = shim.run_dff_on_image(wrapped, resnet.layer4, resnet.fc, img, images[0], n_components=3)
    assert out.shape == (96, 3 * 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :96], np.asarray(img))
    with pytest.raises(shim_ff.CompatTypeError, match="id2label"):
        shim.run_dff_on_image(resnet, resnet.layer4, resnet.fc, img, images[0])
    legend = shim_ff.create_labels_legend(np.array([[0.1, 0.7, 0.2]]), {0: "a", 1: "b", 2: "c"})
    assert legend == ["b:0.70\nc:0.20"]
