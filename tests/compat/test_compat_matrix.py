"""Both shims against their peers on torchvision architectures (weights=None), every method
camkit has, batch 1 and 4: the heavy matrix (``-m slow``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import HAS_CONTRIB, images, needs_grad_cam, needs_torchcam
from test_grad_cam_shim import compare
from test_torchcam_shim import run as tc_run
from torch import nn

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
