"""RefineCAM's product fusion against a direct re-implementation, and (slow) against
torchcam's and pytorch-grad-cam's ``RefineCAM``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from camkit_contrib import refine
from torch import Tensor

import camkit
from camkit.errors import InputError


def minmax(m: Tensor) -> Tensor:
    lo = m.flatten(1).min(1).values[:, None, None]
    hi = m.flatten(1).max(1).values[:, None, None]
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(m))


def test_refine_is_the_normalized_product_of_normalized_maps():
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(2, 4, 4, generator=gen) * 5, torch.rand(2, 8, 8, generator=gen) - 2]
    expected = torch.ones(2, 8, 8)
    for m in maps:
        up = F.interpolate(minmax(m)[:, None], size=(8, 8), mode="bilinear", align_corners=False)
        expected = expected * up[:, 0]
    torch.testing.assert_close(refine(maps), minmax(expected))
    assert refine(maps, size=(10, 12)).shape == (2, 10, 12)


def test_refine_of_one_map_is_the_normalized_map():
    m = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(refine([m]), minmax(m))


def test_refine_rejects_bad_maps():
    with pytest.raises(InputError, match="non-empty"):
        refine([])
    with pytest.raises(InputError, match="one batch size"):
        refine([torch.rand(2, 4, 4), torch.rand(3, 4, 4)])


LAYERS = ["layer2", "layer3", "layer4"]


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))


def ours(resnet, images, size=None) -> np.ndarray:
    res = camkit.create("layercam", resnet, LAYERS)(images, [3, 7])
    return refine(res.layer_maps.values(), size=size).double().numpy()


def assert_close_maps(a: np.ndarray, b: np.ndarray) -> None:
    for p, q in zip(a, b):
        assert np.corrcoef(p.ravel(), q.ravel())[0, 1] >= 0.999


@pytest.mark.slow
def test_refine_matches_torchcam(resnet, images):
    methods = pytest.importorskip("torchcam.methods")
    with methods.RefineCAM(
        resnet, LAYERS, input_shape=(3, 128, 128), base_method=methods.LayerCAM
    ) as extractor:
        scores = resnet(images)
        theirs = extractor([3, 7], scores)[0].detach().double().numpy()
    assert_close_maps(ours(resnet, images), theirs)


@pytest.mark.slow
def test_refine_matches_grad_cam(resnet, images):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = [getattr(resnet, name) for name in LAYERS]
    cam = grad_cam.RefineCAM(resnet, layers, base_method=grad_cam.LayerCAM)
    theirs = cam(
        input_tensor=images, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
    )
    for base in cam.base_cam_per_layer:
        base.activations_and_grads.release()
    assert_close_maps(ours(resnet, images, size=(128, 128)), np.asarray(theirs, dtype=np.float64))
