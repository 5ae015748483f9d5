"""The contrib methods against pytorch-grad-cam 1.5.7 (a test-only oracle) on ResNet-18.

The peer's raw map is what its ``get_cam_image`` returns for the layer, before its ReLU and
scaling; it is recorded by wrapping that method, so both libraries start from their own
forward and backward pass. Maps are compared by Pearson correlation. Where camkit deliberately
differs (see docs/methods.md) the test says how.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import Tensor

import camkit

grad_cam = pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("sklearn")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.slow

LAYER = "layer3"
TARGETS = [3, 7]


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))


def peer_raw_maps(peer_cls, model, images: Tensor, **options) -> np.ndarray:
    """``(B, h, w)`` maps of a pytorch-grad-cam method before its ReLU."""
    cam = peer_cls(model=model, target_layers=[model.layer3], **options)
    recorded: list[np.ndarray] = []
    compute = cam.get_cam_image

    def record(*args, **kwargs):
        recorded.append(compute(*args, **kwargs))
        return recorded[-1]

    cam.get_cam_image = record
    cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    cam.activations_and_grads.release()
    (raw,) = recorded
    return np.asarray(raw, dtype=np.float64)


def camkit_maps(name: str, model, images: Tensor, **config) -> np.ndarray:
    res = camkit.create(name, model, LAYER, **config)(images, TARGETS)
    return res.layer_maps[LAYER].double().numpy()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def assert_same_maps(ours: np.ndarray, theirs: np.ndarray, *, up_to_sign: bool = False) -> None:
    for mine, peer in zip(ours, theirs):
        r = pearson(mine, peer)
        assert (abs(r) if up_to_sign else r) >= 0.999, r


@pytest.mark.parametrize(
    ("name", "peer"), [("eigencam", "EigenCAM"), ("eigengradcam", "EigenGradCAM")]
)
def test_eigen_center_matches_grad_cam(resnet, images, name, peer):
    # the peer keeps whatever sign LAPACK returns; camkit orients by the channel mean
    theirs = peer_raw_maps(getattr(grad_cam, peer), resnet, images)
    assert_same_maps(camkit_maps(name, resnet, images, center=True), theirs, up_to_sign=True)


@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "poly", "linear", "cosine"])
@pytest.mark.parametrize("gamma", [None, 0.01])
def test_kpcacam_matches_grad_cam(resnet, images, kernel, gamma):
    theirs = peer_raw_maps(grad_cam.KPCA_CAM, resnet, images, kernel=kernel, gamma=gamma)
    ours = camkit_maps("kpcacam", resnet, images, kernel=kernel, gamma=gamma)
    assert_same_maps(ours, theirs, up_to_sign=True)


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0])
def test_fem_matches_grad_cam(resnet, images, k):
    theirs = np.maximum(peer_raw_maps(grad_cam.FEM, resnet, images, k=k), 0)
    assert_same_maps(camkit_maps("fem", resnet, images, k=k), theirs)


def test_segeigencam_matches_grad_cam(resnet, images):
    theirs = np.maximum(peer_raw_maps(grad_cam.SegEigenCAM, resnet, images), 0)
    assert_same_maps(camkit_maps("segeigencam", resnet, images), theirs)
