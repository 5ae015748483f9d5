"""Both shims against their peers on torchvision architectures (weights=None), every method
camkit has, batch 1 and 4: the heavy matrix (``-m slow``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compat_helpers import (
    HAS_CONTRIB,
    images,
    needs_contrib,
    needs_grad_cam,
    needs_torchcam,
    tiny_vit,
)
from test_grad_cam_shim import compare
from test_grad_cam_shim import peer as grad_cam_peer
from test_grad_cam_shim import run as grad_cam_run
from test_torchcam_shim import run as tc_run
from torch import nn

import camkit.compat.pytorch_grad_cam
from camkit.compat.pytorch_grad_cam.utils import model_targets as shim_targets
from camkit.compat.torchcam import methods as tc_shim

pytestmark = pytest.mark.slow

ARCHS = {
    # name: (factory, torchcam layer name, grad-cam layer getter)
    "resnet18": ("resnet18", "layer4", lambda m: [m.layer4[-1]]),
    "mobilenet_v3_small": ("mobilenet_v3_small", "features.12", lambda m: [m.features[-1]]),
    "vgg11": ("vgg11", "features.18", lambda m: [m.features[-2]]),
    "densenet121": ("densenet121", "features.denseblock4", lambda m: [m.features.denseblock4]),
}


def build(name: str) -> nn.Module:
    import torchvision.models as tvm

    torch.manual_seed(0)
    return getattr(tvm, ARCHS[name][0])(weights=None).eval()


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", ["GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "ScoreCAM"])
def test_torchcam_matrix(arch, method, batch):
    from torchcam import methods as peer

    if method == "ScoreCAM" and arch in ("vgg11", "densenet121"):
        pytest.skip("Score-CAM forwards one masked input per channel: minutes on these models")

    model, layer = build(arch), ARCHS[arch][1]
    x = images(batch, 64)
    # legacy_numerics: the peers' epsilons divide by almost zero on these untrained models
    kw = {"legacy_numerics": True} if method in ("GradCAMpp", "XGradCAM") else {}
    peer_kw = {"batch_size": 64} if method == "ScoreCAM" else {}
    ours = tc_run(tc_shim, method, model, layer, x, 5, **kw, **peer_kw)
    theirs = tc_run(peer, method, model, layer, x, 5, **peer_kw)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=0)


GRAD_CAM_METHODS = ["GradCAM", "XGradCAM", "LayerCAM", "GradCAMPlusPlus"]
if HAS_CONTRIB:
    GRAD_CAM_METHODS += ["HiResCAM", "GradCAMElementWise", "EigenCAM", "EigenGradCAM"]


@needs_grad_cam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", GRAD_CAM_METHODS)
def test_grad_cam_matrix(arch, method, batch):
    model = build(arch)
    legacy = method in ("GradCAMPlusPlus", "XGradCAM", "EigenCAM", "EigenGradCAM")
    # XGrad-CAM's legacy epsilon divides by channel sums of ~1e-8 on untrained models, which
    # amplifies the forward's float rounding (camkit may run it channels-last).
    atol = 1e-3 if method == "XGradCAM" else 1e-4
    compare(
        method, model, ARCHS[arch][2](model), images(batch, 64), [5] * batch,
        {"legacy_numerics": True} if legacy else {}, atol=atol,
    )  # fmt: skip


@needs_grad_cam
@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_grad_cam_classifier_targets_are_the_default(arch):
    model = build(arch)
    x = images(2, 64)
    explicit = [shim_targets.ClassifierOutputTarget(int(c)) for c in model(x).argmax(1)]
    from camkit.compat.pytorch_grad_cam import GradCAM

    cam = GradCAM(model, ARCHS[arch][2](model))
    np.testing.assert_allclose(cam(x, None), cam(x, explicit), atol=1e-6)


# -- gaps filled: CAM, IS-CAM, the contrib methods, Score-CAM, ViTs ------------------------


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(
    ("arch", "layer", "fc"),
    [("resnet18", "layer4", "fc"), ("densenet121", "features", "classifier")],
)
def test_torchcam_cam_matrix(arch, layer, fc, batch):
    """CAM where the architecture has one (global pooling, then a linear classifier)."""
    from torchcam import methods as peer

    model, x = build(arch), images(batch, 64)
    ours = tc_run(tc_shim, "CAM", model, layer, x, 5, fc_layer=fc)
    theirs = tc_run(peer, "CAM", model, layer, x, 5, fc_layer=fc)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=0)


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_torchcam_iscam_matrix(arch, batch):
    """IS-CAM with torchcam's scales (``legacy_numerics``): no noise, so equal to rounding.
    (SS-CAM and Smooth Grad-CAM++ draw their noise from another generator: compared without
    noise on the small CNN in test_torchcam_shim.py.)"""
    from torchcam import methods as peer

    model, x = build(arch), images(batch, 64)
    kw = {"batch_size": 64, "num_samples": 2}
    ours = tc_run(tc_shim, "ISCAM", model, ARCHS[arch][1], x, 5, legacy_numerics=True, **kw)
    theirs = tc_run(peer, "ISCAM", model, ARCHS[arch][1], x, 5, **kw)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=0)


def _vit_transform(grid: int):
    from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    return lambda t: vit_reshape_transform(t, grid, grid)


def _vit(kind: str) -> tuple[nn.Module, int, int]:
    """(model, input side, token grid side): the tiny ViT of compat_helpers, or torchvision's
    ViT-B/16 without weights."""
    if kind == "tiny":
        return tiny_vit(), 32, 4
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    return vit_b_16(weights=None).eval(), 224, 14


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("kind", ["tiny"])
@pytest.mark.parametrize("method", ["GradCAM", "GradCAMpp", "XGradCAM", "LayerCAM", "ScoreCAM"])
def test_torchcam_vit_matrix(method, kind, batch):
    """torchcam's methods on a ViT's last block (``ln_1``; Score-CAM: the block's output)
    through ``reshape_transform``."""
    from torchcam import methods as peer

    model, size, grid = _vit(kind)
    # Score-CAM weighs channels almost alike on an untrained model, and ln_1's channels sum
    # to ~0 at each token: its map there is rounding. The block's output is well posed.
    layer = "encoder.layers.encoder_layer_1" + ("" if method == "ScoreCAM" else ".ln_1")
    x = images(batch, size)
    kw = {"reshape_transform": _vit_transform(grid)}
    kw_ours = {**kw, "legacy_numerics": True} if method in ("GradCAMpp", "XGradCAM") else kw
    if method == "ScoreCAM":
        kw, kw_ours = {**kw, "batch_size": 16}, {**kw_ours, "batch_size": 16}
    ours = tc_run(tc_shim, method, model, layer, x, 3, **kw_ours)
    theirs = tc_run(peer, method, model, layer, x, 3, **kw)
    assert ours[0].shape == theirs[0].shape == (batch, grid, grid)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-4, rtol=0)


def _pair(name, model, layers, x, classes, ours_init=None, theirs_init=None, **call):
    """Both libraries' ``name`` maps (each with its own targets and init)."""
    shim = camkit.compat.pytorch_grad_cam
    theirs = grad_cam_run(
        grad_cam_peer(), name, model, layers, x, classes, init=theirs_init or {}, **call
    )
    ours = grad_cam_run(shim, name, model, layers, x, classes, init=ours_init or {}, **call)
    assert ours.shape == theirs.shape == (x.shape[0], *x.shape[2:])
    return ours, theirs


CONTRIB_EXACT = ["FEM", "SegEigenCAM"]


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("method", CONTRIB_EXACT)
def test_grad_cam_contrib_matrix(arch, method, batch):
    """FEM and Seg-Eigen-CAM (camkit-contrib) against pytorch-grad-cam (96 px: FEM needs
    more than ``k^2 + 1`` locations)."""
    model = build(arch)
    ours, theirs = _pair(method, model, ARCHS[arch][2](model), images(batch, 96), [5] * batch)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_grad_cam_finer_cam_matrix(arch, batch):
    """Finer-CAM (Grad-CAM base, the original's default references) against the original."""
    shim = camkit.compat.pytorch_grad_cam
    model = build(arch)
    ours, theirs = _pair(
        "FinerCAM", model, ARCHS[arch][2](model), images(batch, 64), [5] * batch,
        {"base_method": shim.GradCAM}, {"base_method": grad_cam_peer().GradCAM},
    )  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@needs_grad_cam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_grad_cam_scorecam_matrix(arch, batch):
    """Score-CAM: pytorch-grad-cam upsamples with ``align_corners=True`` and normalizes after
    upsampling (a documented difference): the maps agree closely, not to rounding."""
    model = build(arch)
    x = images(batch, 64)
    theirs = grad_cam_run(grad_cam_peer(), "ScoreCAM", model, ARCHS[arch][2](model), x, [5] * batch)
    ours = grad_cam_run(
        camkit.compat.pytorch_grad_cam, "ScoreCAM", model, ARCHS[arch][2](model), x, [5] * batch
    )
    for a, b in zip(ours, theirs, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


VIT_GRAD_CAM = ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM"]
if HAS_CONTRIB:
    VIT_GRAD_CAM += ["HiResCAM", "GradCAMElementWise", "EigenCAM", "EigenGradCAM", "FEM"]


VIT_CASES = [(m, "tiny") for m in VIT_GRAD_CAM] + [
    (m, "vit_b_16") for m in ("GradCAM", "GradCAMPlusPlus", "LayerCAM")
]


@needs_grad_cam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("method", "kind"), VIT_CASES)
def test_grad_cam_vit_matrix(method, kind, batch):
    """Every pytorch-grad-cam method camkit has (but Score-CAM and Ablation-CAM, whose
    perturbations differ by design) on a ViT's last block through ``reshape_transform``:
    the tiny ViT (fast) and ViT-B/16 without weights (``-m slow``, the gradient methods)."""
    model, size, grid = _vit(kind)
    layers = [model.encoder.layers[-1].ln_1]
    legacy = method in ("GradCAMPlusPlus", "XGradCAM", "EigenCAM", "EigenGradCAM")
    init = {"reshape_transform": _vit_transform(grid)}
    ours, theirs = _pair(
        method, model, layers, images(batch, size), [2] * batch,
        {**init, "legacy_numerics": True} if legacy else init, init,
    )  # fmt: skip
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
