"""More of pytorch-grad-cam 1.5.7's own tests (its ``tests/`` folder), re-expressed against
``camkit.compat.pytorch_grad_cam``: the same arguments and assertions, torchvision models
without downloaded weights (``weights=None``) and random images in place of its example
photo. Methods camkit does not have yet (FullGrad, ShapleyCAM) are skipped while the shim
raises ``MethodNotFoundError``, so these tests run once they land. Each test's docstring names
the original."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from compat_helpers import small_cnn, until_landed

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat.pytorch_grad_cam.utils.image import preprocess_image
from camkit.compat.pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
)

ALL_METHODS = [
    "ScoreCAM", "AblationCAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM",
    "EigenGradCAM", "LayerCAM", "FullGrad", "KPCA_CAM", "SegEigenCAM",
]  # fmt: skip


def _input(batch: int, width: int, height: int) -> torch.Tensor:
    """preprocess_image of an RGB uint8 photo-sized random image, repeated ``batch`` times."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).astype(np.float32) / 255
    return preprocess_image(img).repeat(batch, 1, 1, 1)


def _run_all(model, layers, name, batch, width, height, target_category, eigen_smooth):
    x = _input(batch, width, height)
    cam = until_landed(getattr(shim, name), model=model, target_layers=layers)
    cam.batch_size = 4
    targets = None if target_category is None else [ClassifierOutputTarget(target_category)] * batch
    out = cam(input_tensor=x, targets=targets, aug_smooth=False, eigen_smooth=eigen_smooth)
    assert out.shape[0] == x.shape[0]
    assert out.shape[1:] == x.shape[2:]
    assert out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("eigen_smooth", [True, False])
@pytest.mark.parametrize("target_category", [None, 3])
@pytest.mark.parametrize(("batch", "width", "height"), [(2, 32, 32), (1, 32, 40)])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_all_cam_models_can_run_small_cnn(
    name, batch, width, height, target_category, eigen_smooth
):
    """test_run_all_models.py::test_all_cam_models_can_run, every method of the original's
    list, on a small CNN (two target layers, as its ResNet-18 case)."""
    model = small_cnn()
    _run_all(
        model, [model[0][1], model[0][3]], name, batch, width, height, target_category,
        eigen_smooth,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("eigen_smooth", [True, False])
@pytest.mark.parametrize("target_category", [None, 100])
@pytest.mark.parametrize(("batch", "width", "height"), [(2, 32, 32), (1, 32, 40)])
@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_all_cam_models_can_run(name, arch, batch, width, height, target_category, eigen_smooth):
    """test_run_all_models.py::test_all_cam_models_can_run: ResNet-18 (``layer4[-1]``,
    ``layer4[-2]``) and VGG-11 (``features[-1]``), weights=None."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = getattr(tvm, arch)(weights=None).eval()
    layers = [model.layer4[-1], model.layer4[-2]] if arch == "resnet18" else [model.features[-1]]
    _run_all(model, layers, name, batch, width, height, target_category, eigen_smooth)


def _refine_cam_run(model, layers, base, batch, size):
    x = _input(batch, size, size)
    targets = [ClassifierOutputTarget(243 % model(x[:1]).shape[1])] * batch
    cam = until_landed(
        shim.RefineCAM, model=model, target_layers=layers, base_method=getattr(shim, base)
    )
    out = cam(input_tensor=x, targets=targets)
    assert out is not None
    assert out.shape[0] == x.shape[0]
    assert out.shape[1:] == x.shape[2:]
    assert out.min() >= 0 and out.max() <= 1


REFINE_BASES = [
    "GradCAM", "ScoreCAM", "GradCAMPlusPlus", "XGradCAM", "EigenCAM", "EigenGradCAM", "LayerCAM"
]  # fmt: skip


@pytest.mark.parametrize(("batch", "size"), [(2, 32), (1, 48)])
@pytest.mark.parametrize("base", REFINE_BASES)
def test_refine_cam_small_cnn(base, batch, size):
    """test_refine_cam.py::test_refine_cam on a small CNN (the shapes; the original's ARCC
    metric is not in the shim)."""
    model = small_cnn()
    _refine_cam_run(model, [model[0][1], model[0][3]], base, batch, size)


@pytest.mark.slow
@pytest.mark.parametrize(("batch", "size"), [(2, 112), (1, 224)])
@pytest.mark.parametrize("base", REFINE_BASES)
def test_refine_cam(base, batch, size):
    """test_refine_cam.py::test_refine_cam: ResNet-18 (``layer4[-1]``, ``layer4[-2]``),
    weights=None, the original's sizes (without its ARCC metric, not in the shim)."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    _refine_cam_run(model, [model.layer4[-1], model.layer4[-2]], base, batch, size)


# -- test_fasterrcnn_target_device.py ---------------------------------------------------------


def test_target_inherits_output_device_cpu():
    """test_fasterrcnn_target_device.py::test_target_inherits_output_device_cpu."""
    target = FasterRCNNBoxScoreTarget(
        labels=[1], bounding_boxes=[np.array([0.0, 0.0, 10.0, 10.0], dtype=np.float32)]
    )
    outputs = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9]),
    }
    score = target(outputs)
    assert score.device.type == "cpu"
    assert score.item() > 0


def test_target_returns_zero_on_empty_boxes():
    """test_fasterrcnn_target_device.py::test_target_returns_zero_on_empty_boxes."""
    target = FasterRCNNBoxScoreTarget(labels=[1], bounding_boxes=[np.zeros(4)])
    outputs = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "scores": torch.zeros((0,)),
    }
    score = target(outputs)
    assert score.device.type == "cpu"
    assert score.item() == 0.0


def test_target_preserves_boxes_dtype():
    """test_fasterrcnn_target_device.py::test_target_preserves_boxes_dtype."""
    target = FasterRCNNBoxScoreTarget(
        labels=[1], bounding_boxes=[np.array([0.0, 0.0, 10.0, 10.0], dtype=np.float64)]
    )
    outputs = {
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64),
        "labels": torch.tensor([1]),
        "scores": torch.tensor([0.9], dtype=torch.float64),
    }
    assert target(outputs).dtype == torch.float64


# -- test_context_release.py and test_context_release_cuda.py --------------------------------


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("name", ["GradCAM", "ShapleyCAM"])
def test_memory_usage_in_loop(name):
    """test_context_release.py::test_memory_usage_in_loop: the context used repeatedly keeps
    nothing alive (the original watches the process's memory share; here the live tensors
    and the hooks, which do not depend on the machine's load). ResNet-18 at 64 px, 20 uses."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = _input(1, 64, 64)
    targets = [ClassifierOutputTarget(100)]
    initial = 0
    for i in range(20):
        with until_landed(
            getattr(shim, name), model=model, target_layers=[model.layer4[-1]]
        ) as cam:
            cam(input_tensor=x, targets=targets, aug_smooth=False, eigen_smooth=False)
        if i == 0:
            initial = _live_tensors()
    assert _live_tensors() <= initial
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", ["GradCAM", "ShapleyCAM"])
def test_memory_usage_in_loop_cuda(name):
    """test_context_release_cuda.py::test_memory_usage_in_loop: CUDA memory after 100 uses
    at most 1.5 times that after the first (ResNet-18 weights=None, 224 px)."""
    from torchvision.models import resnet18

    model = resnet18(weights=None).eval().cuda()
    x = _input(1, 224, 224).cuda()
    targets = [ClassifierOutputTarget(100)]
    initial = 0
    for i in range(100):
        with until_landed(
            getattr(shim, name), model=model, target_layers=[model.layer4[-1]]
        ) as cam:
            cam(input_tensor=x, targets=targets, aug_smooth=False, eigen_smooth=False)
            if i == 0:
                initial = torch.cuda.memory_allocated()
        assert torch.cuda.memory_allocated() <= initial * 1.5
