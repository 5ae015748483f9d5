"""FullGrad, Guided Backpropagation and Guided Grad-CAM against pytorch-grad-cam 1.5.7 (a
test-only oracle) on ResNet-18 and VGG-11 with batch norm (``weights=None``; batch norms given
random running statistics and biases, so that every bias term counts). The peer replaces the
model's ReLUs and does not restore them as they were, so it runs on a copy."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torchvision
from camkit_contrib import guided_backprop, guided_gradcam
from torch import Tensor, nn

import camkit

grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.slow

TARGETS = [3, 7]
LAYERS = {"resnet18": "layer3", "vgg11_bn": "features.18"}


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])


@pytest.fixture(scope="module", params=["resnet18", "vgg11_bn"])
def model(request) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = getattr(torchvision.models, request.param)(weights=None, num_classes=10).eval()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
    net.camkit_layer = LAYERS[request.param]
    return net


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def test_fullgrad(model, images):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cam = grad_cam.FullGrad(copy.deepcopy(model), [])
        theirs = cam(images, [ClassifierOutputTarget(t) for t in TARGETS])
    # In the model's own layout, the maps are the peer's to float rounding.
    cam = camkit.create("fullgrad", model, model.camkit_layer, channels_last=False)
    np.testing.assert_allclose(cam(images, TARGETS).maps.numpy(), theirs, atol=1e-4)
    # camkit's default runs a batch channels-last on CPU: float rounding moves a few of VGG's
    # max-pooling choices, and the map with them, by up to 1% here.
    ours = camkit.create("fullgrad", model, model.camkit_layer)(images, TARGETS).maps.numpy()
    for a, b in zip(ours, theirs):
        assert pearson(a, b) >= 0.999


def test_guided_backprop(model, images):
    for image, target in zip(images, TARGETS):
        x = image[None]
        theirs = grad_cam.GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(
            x.clone(), target
        )
        ours = guided_backprop(model, x, [target], layer=model.camkit_layer)
        ours = ours[0].numpy().transpose(1, 2, 0)
        assert pearson(ours, theirs) >= 0.999
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-7)


def test_guided_gradcam(model, images):
    """pytorch-grad-cam's recipe: its Grad-CAM map (in [0, 1], at the input's size) times its
    guided backpropagation, channel by channel."""
    for image, target in zip(images, TARGETS):
        x = image[None]
        peer = copy.deepcopy(model)
        layer = peer.get_submodule(model.camkit_layer)
        mask = grad_cam.GradCAM(peer, [layer])(x, [ClassifierOutputTarget(target)])
        gb = grad_cam.GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(x.clone(), target)
        theirs = gb * mask[0][..., None]
        assert mask.max() > 0 and np.abs(theirs).max() > 0
        ours = guided_gradcam(model, x, model.camkit_layer, [target])[0].numpy().transpose(1, 2, 0)
        assert pearson(ours, theirs) >= 0.999
        np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-6)
