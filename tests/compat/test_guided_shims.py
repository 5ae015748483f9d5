"""pytorch-grad-cam's FullGrad and GuidedBackpropReLUModel, computed by camkit-contrib,
against the originals (which change the model they run: each gets its own copy)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_contrib, needs_grad_cam, small_cnn
from torch import nn

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat.pytorch_grad_cam.utils import model_targets as shim_targets
from camkit.errors import CamkitWarning, InputError

pytestmark = needs_contrib


def grad_cam():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam

    return pytorch_grad_cam


def bn_cnn() -> nn.Module:
    """Convolutions with biases and batch norms with non-trivial running statistics."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding=1, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(6, 5),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval()


def full_grad(lib, model, x, classes, **call):
    targets_mod = shim_targets if lib is shim else lib.utils.model_targets
    targets = [targets_mod.ClassifierOutputTarget(c) for c in classes]
    return lib.FullGrad(model, [])(x, targets, **call)


@needs_grad_cam
@pytest.mark.parametrize("make", [small_cnn, bn_cnn])
def test_fullgrad_matches_the_original(make):
    model, x = make(), images(2)
    theirs = full_grad(grad_cam(), copy.deepcopy(model), x, [1, 3])
    ours = full_grad(shim, model, x, [1, 3])
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape == (2, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@needs_grad_cam
def test_fullgrad_aug_smooth_matches_the_original():
    model, x = bn_cnn(), images(1)
    theirs = full_grad(grad_cam(), copy.deepcopy(model), x, [2], aug_smooth=True)
    ours = full_grad(shim, model, x, [2], aug_smooth=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_fullgrad_warns_on_target_layers():
    model = bn_cnn()
    with pytest.warns(CamkitWarning, match="ignored"):
        cam = shim.FullGrad(model, [model[0]])
    assert cam.target_layers == [model[0], model[1], model[3], model[4]]


@needs_grad_cam
@pytest.mark.parametrize("make", [small_cnn, bn_cnn])
def test_fullgrad_eigen_smooth_legacy_matches_the_original(make):
    """pytorch-grad-cam's FullGrad does use eigen_smooth: the principal component of its
    terms at 1/8 of the input size; ``legacy_numerics`` keeps NumPy's sign, as it does."""
    model, x = make(), images(2)
    theirs = full_grad(grad_cam(), copy.deepcopy(model), x, [1, 3], eigen_smooth=True)
    plain = full_grad(grad_cam(), copy.deepcopy(model), x, [1, 3])
    assert np.abs(theirs - plain).max() > 0.1  # the option changes the map
    targets = [shim_targets.ClassifierOutputTarget(c) for c in (1, 3)]
    ours = shim.FullGrad(model, [], legacy_numerics=True)(x, targets, eigen_smooth=True)
    assert ours.dtype == np.float32 and ours.shape == (2, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@needs_grad_cam
@pytest.mark.parametrize("make", [small_cnn, bn_cnn])
def test_fullgrad_eigen_smooth_matches_the_original_up_to_its_sign(make):
    """By default camkit orients the component by its loadings (their sum non-negative):
    each image's map is the original's, or its complement where NumPy's SVD picked the
    other sign."""
    model, x = make(), images(2)
    theirs = full_grad(grad_cam(), copy.deepcopy(model), x, [1, 3], eigen_smooth=True)
    ours = full_grad(shim, model, x, [1, 3], eigen_smooth=True)
    for mine, orig in zip(ours, theirs):
        assert min(np.abs(mine - orig).max(), np.abs(mine - (1 - orig)).max()) < 1e-5


@needs_grad_cam
def test_fullgrad_eigen_and_aug_smooth_match_the_original():
    model, x = bn_cnn(), images(1)
    theirs = full_grad(grad_cam(), copy.deepcopy(model), x, [2], eigen_smooth=True, aug_smooth=True)
    targets = [shim_targets.ClassifierOutputTarget(2)]
    cam = shim.FullGrad(model, [], legacy_numerics=True)
    ours = cam(x, targets, aug_smooth=True, eigen_smooth=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    plain = full_grad(grad_cam(), copy.deepcopy(model), x, [2])
    np.testing.assert_allclose(cam(x, targets), plain, atol=1e-5, rtol=0)  # same object


def test_fullgrad_eigen_smooth_needs_eight_pixels():
    with pytest.raises(InputError, match="too small"):
        shim.FullGrad(bn_cnn(), [])(images(1, size=7), None, eigen_smooth=True)


@needs_grad_cam
@pytest.mark.parametrize("make", [small_cnn, bn_cnn])
@pytest.mark.parametrize("category", [None, 2])
def test_guided_backprop_matches_the_original(make, category):
    model, x = make(), images(1)
    theirs = grad_cam().GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(
        x.clone(), category
    )
    ours = shim.GuidedBackpropReLUModel(model, device="cpu")(x, category)
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape == (32, 32, 3)
    assert np.abs(theirs).max() > 0
    np.testing.assert_allclose(ours, theirs, atol=1e-7, rtol=1e-5)


def test_guided_backprop_leaves_model_and_input_alone():
    model = bn_cnn().train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    x = images(1)
    gb = shim.GuidedBackpropReLUModel(model)
    assert gb.forward(x).shape == (1, 5)
    gb(x, 1)
    assert model.training and not x.requires_grad and x.grad is None
    assert [m for m in model.modules() if isinstance(m, nn.ReLU)] == relus
    assert all(m.inplace for m in relus)
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
