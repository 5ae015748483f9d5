"""pytorch-grad-cam 1.5.7's ``metrics.perturbation_confidence``, ``metrics.arcc``,
``utils.svd_on_activations`` and ``utils.find_layers`` in the shim, compared with the
installed original on the small CNN and ResNet-18 (``weights=None``); and every module of
the original's ``metrics`` and ``utils`` packages importable from the shim, with its names."""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_grad_cam, small_cnn, until_landed
from torch import nn

from camkit.compat.pytorch_grad_cam.metrics import arcc as shim_arcc
from camkit.compat.pytorch_grad_cam.metrics import perturbation_confidence as shim_pc
from camkit.compat.pytorch_grad_cam.utils import find_layers as shim_fl
from camkit.compat.pytorch_grad_cam.utils import svd_on_activations as shim_svd
from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from camkit.errors import ConfigError

#: public names of the original's modules the shim does not have at the same path (none)
KNOWN_GAPS: set[tuple[str, str]] = set()


def _original_modules() -> list[str]:
    names = []
    for package in ("metrics", "utils"):
        original = importlib.import_module(f"pytorch_grad_cam.{package}")
        names += [f"{package}.{i.name}" for i in pkgutil.iter_modules(original.__path__)]
    return names


@needs_grad_cam
def test_every_module_of_the_originals_metrics_and_utils_is_in_the_shim():
    missing = set()
    modules = _original_modules()
    assert {"metrics.arcc", "metrics.perturbation_confidence", "utils.find_layers"} <= set(modules)
    for name in modules:
        original = importlib.import_module(f"pytorch_grad_cam.{name}")
        shim = importlib.import_module(f"camkit.compat.pytorch_grad_cam.{name}")
        for attr, value in vars(original).items():
            defined = getattr(value, "__module__", None) == original.__name__
            kind = inspect.isclass(value) or inspect.isfunction(value)
            if defined and kind and not attr.startswith("_") and not hasattr(shim, attr):
                missing.add((name, attr))
    assert missing == KNOWN_GAPS
    for package in ("metrics", "utils"):  # the package-level names
        original = importlib.import_module(f"pytorch_grad_cam.{package}")
        shim = importlib.import_module(f"camkit.compat.pytorch_grad_cam.{package}")
        assert [a for a in vars(original) if not a.startswith("_") and not hasattr(shim, a)] == []


def test_the_new_modules_import_no_peer_opencv_or_scikit_learn():
    code = (
        "import sys\n"
        "import camkit.compat.pytorch_grad_cam.metrics, camkit.compat.pytorch_grad_cam.utils\n"
        "print(sorted(m for m in ('pytorch_grad_cam', 'cv2', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- metrics.perturbation_confidence ------------------------------------------------------


def _cams(batch: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, size, size), dtype=np.float32)


def _targets(batch: int) -> list[ClassifierOutputTarget]:
    return [ClassifierOutputTarget(c) for c in (1, 3, 0, 4)[:batch]]


def _remove(module, order: str, percentile: float, road_module):
    remover = getattr(module, f"Remove{order}RelevantFirst")
    return module.PerturbationConfidenceMetric(
        remover(percentile, road_module.NoisyLinearImputer(noise=0.0))
    )


@needs_grad_cam
@pytest.mark.parametrize("order", ["Most", "Least"])
@pytest.mark.parametrize("percentile", [30, 75])
@pytest.mark.parametrize("return_diff", [True, False])
def test_removal_metric_matches_grad_cam(order, percentile, return_diff):
    from pytorch_grad_cam.metrics import perturbation_confidence as pc
    from pytorch_grad_cam.metrics import road

    from camkit.compat.pytorch_grad_cam.metrics import road as shim_road

    model, x, cams, targets = small_cnn(), images(2, 16), _cams(2, 16), _targets(2)
    ours, our_images = _remove(shim_pc, order, percentile, shim_road)(
        x, cams, targets, model, return_visualization=True, return_diff=return_diff
    )
    theirs, their_images = _remove(pc, order, percentile, road)(
        x, cams, targets, model, return_visualization=True, return_diff=return_diff
    )
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == (2,)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(our_images, their_images, rtol=1e-5, atol=1e-6)
    assert not torch.equal(our_images, x)


def test_removal_keeps_the_pixels_below_the_percentile():
    """A direct re-derivation: 10 distinct values, the 40th percentile 0.36 keeps 4 pixels."""
    mask = torch.arange(10.0).reshape(2, 5) / 10
    kept = shim_pc.RemoveMostRelevantFirst(40, lambda image, keep: keep)(torch.zeros(2, 5), mask)
    assert kept.flatten().tolist() == [1.0] * 4 + [0.0] * 6
    least = shim_pc.RemoveLeastRelevantFirst(40, lambda image, keep: keep)(torch.zeros(2, 5), mask)
    assert least.flatten().tolist() == [0.0] * 6 + [1.0] * 4
    with pytest.raises(ConfigError, match="auto"):
        shim_pc.RemoveMostRelevantFirst("auto", lambda image, keep: keep)


@needs_grad_cam
def test_perturbation_metric_with_any_perturbation_matches_grad_cam():
    from pytorch_grad_cam.metrics import perturbation_confidence as pc

    from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import multiply_tensor_with_cam

    model, x, cams, targets = small_cnn(), images(2, 16), _cams(2, 16), _targets(2)
    ours = shim_pc.PerturbationConfidenceMetric(multiply_tensor_with_cam)(x, cams, targets, model)
    theirs = pc.PerturbationConfidenceMetric(lambda i, c: i * c)(x, cams, targets, model)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@needs_grad_cam
def test_averager_across_thresholds_matches_grad_cam():
    from pytorch_grad_cam.metrics import perturbation_confidence as pc
    from pytorch_grad_cam.metrics import road

    from camkit.compat.pytorch_grad_cam.metrics import road as shim_road

    model, x, cams, targets = small_cnn(), images(2, 16), _cams(2, 16), _targets(2)
    percentiles = [20, 50, 80]
    ours = shim_pc.AveragerAcrossThresholds(
        lambda p: _remove(shim_pc, "Least", p, shim_road), percentiles
    )(x, cams, targets, model)
    theirs = pc.AveragerAcrossThresholds(lambda p: _remove(pc, "Least", p, road), percentiles)(
        x, cams, targets, model
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    single = [_remove(shim_pc, "Least", p, shim_road)(x, cams, targets, model) for p in percentiles]
    np.testing.assert_allclose(ours, np.mean(single, axis=0), rtol=1e-6)


# --- metrics.arcc -------------------------------------------------------------------------


@needs_grad_cam
def test_complexity_and_pearson_match_grad_cam():
    from pytorch_grad_cam.metrics import arcc

    a, b = _cams(3, 8, seed=2), _cams(3, 8, seed=3)
    b[1] = a[1] * 2 + 0.1  # a perfect correlation
    ours = shim_arcc.batch_pearson_coherency(a, b)
    np.testing.assert_allclose(ours, arcc.batch_pearson_coherency(a, b), rtol=1e-5, atol=1e-6)
    assert ours[1] == pytest.approx(1.0, abs=1e-6)
    complexity = shim_arcc.Complexity()(a)
    assert complexity.dtype == np.float32
    np.testing.assert_allclose(complexity, arcc.Complexity()(a), rtol=1e-6)
    np.testing.assert_allclose(complexity, np.abs(a).reshape(3, -1).mean(1), rtol=1e-6)


@pytest.fixture
def gradcams():
    """The small CNN and a Grad-CAM of each library on its last convolution."""
    pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam

    import camkit.compat.pytorch_grad_cam as shim

    model = small_cnn()
    return model, shim.GradCAM(model, [model[0][2]]), pytorch_grad_cam.GradCAM(model, [model[0][2]])


def test_coherency_matches_grad_cam(gradcams):
    from pytorch_grad_cam.metrics import arcc

    model, ours_cam, their_cam = gradcams
    x, targets = images(2, 16), _targets(2)
    cams = their_cam(input_tensor=x, targets=targets)
    ours = shim_arcc.Coherency()(x, cams, targets, model, ours_cam)
    theirs = arcc.Coherency()(x, cams, targets, model, their_cam)
    assert ours.shape == (2,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not np.allclose(ours, ours[0])  # two images, two scores


def test_arcc_matches_grad_cam_with_the_same_road(gradcams):
    """ROAD adds random noise (compared without noise in test_contrib_shims.py): both
    ARCCs get the same ROAD scores, the rest is computed by each."""
    from pytorch_grad_cam.metrics import arcc

    model, ours_cam, their_cam = gradcams
    x, targets = images(2, 16), _targets(2)
    cams = their_cam(input_tensor=x, targets=targets)
    ours, theirs = shim_arcc.ARCC(ours_cam), arcc.ARCC(their_cam)
    assert ours.road.percentiles == [20, 40, 60, 80]
    for road in ([0.1, 0.3], [-0.2, 0.7]):  # clipped below and above
        ours.road = theirs.road = lambda *args, road=road: np.float32(road)
        score = ours(x, cams, targets, model)
        np.testing.assert_allclose(score, theirs(x, cams, targets, model), rtol=1e-4)
    parts = 1 / shim_arcc.Coherency()(x, cams, targets, model, ours_cam)
    parts += 1 / (1 - shim_arcc.Complexity()(cams)) + 1 / np.clip(2 * np.float32(road), 1e-8, 1)
    np.testing.assert_allclose(score, 3 / parts, rtol=1e-4)
    assert shim_arcc.ARCC(ours_cam)(x, cams, targets, model).shape == (2,)


# --- utils.svd_on_activations -------------------------------------------------------------


def _activations(seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((2, 6, 5, 4)).astype(np.float32)
    a[1] = -np.abs(a[1]) * 3  # the sign correction flips one map
    a[0, 0, 0, 0] = np.nan
    return a


@needs_grad_cam
@pytest.mark.parametrize("name", ["get_2d_projection", "get_2d_projection_with_sign_correction"])
def test_projections_match_grad_cam(name):
    from pytorch_grad_cam.utils import svd_on_activations

    a = _activations()
    ours = getattr(shim_svd, name)(a)
    assert ours.dtype == np.float32 and ours.shape == (2, 5, 4)
    np.testing.assert_allclose(ours, getattr(svd_on_activations, name)(a), rtol=1e-4, atol=1e-5)


def test_projection_is_the_first_principal_component():
    """Direct: the centred rows' projection has the largest variance of any unit direction
    (the top eigenvalue of their scatter matrix), and the sign correction makes max >= |min|."""
    a = np.nan_to_num(_activations())
    for image, projection in zip(a, shim_svd.get_2d_projection(a)):
        rows = image.reshape(6, -1).T.astype(np.float64)
        rows -= rows.mean(0)
        top = np.linalg.eigvalsh(rows.T @ rows)[-1]
        assert float((projection.astype(np.float64) ** 2).sum()) == pytest.approx(top, rel=1e-4)
    corrected = shim_svd.get_2d_projection_with_sign_correction(a)
    assert (corrected.max(axis=(1, 2)) >= np.abs(corrected.min(axis=(1, 2)))).all()
    assert np.allclose(np.abs(corrected), np.abs(shim_svd.get_2d_projection(a)))


@needs_grad_cam
@pytest.mark.parametrize(
    ("kernel", "gamma"),
    [("sigmoid", None), ("rbf", None), ("rbf", 0.5), ("poly", None), ("linear", None),
     ("cosine", None)],
)  # fmt: skip
def test_kernel_projection_matches_grad_cam(kernel, gamma):
    pytest.importorskip("sklearn")
    from pytorch_grad_cam.utils import svd_on_activations

    a = _activations()
    ours = shim_svd.get_2d_projection_kernel(a, kernel=kernel, gamma=gamma)
    theirs = svd_on_activations.get_2d_projection_kernel(a, kernel=kernel, gamma=gamma)
    assert ours.dtype == np.float32 and ours.shape == (2, 5, 4)
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4 * scale)


def test_kernel_projection_with_the_linear_kernel_is_the_projection_up_to_sign():
    a = _activations()
    linear = shim_svd.get_2d_projection_kernel(a, kernel="linear")
    np.testing.assert_allclose(np.abs(linear), np.abs(shim_svd.get_2d_projection(a)), atol=1e-4)
    with pytest.raises(ConfigError, match="kernel"):
        shim_svd.get_2d_projection_kernel(a, kernel="laplace")


def _sample_batch_with_nan() -> np.ndarray:
    a = np.zeros((1, 2, 2, 2), dtype=np.float32)
    a[0, 0, 0, 0] = np.nan
    a[0, 0, 1, 1] = 1.0
    a[0, 1] = np.array([[2.0, 3.0], [4.0, 5.0]], dtype=np.float32)
    return a


@pytest.mark.parametrize(
    "name",
    ["get_2d_projection", "get_2d_projection_kernel", "get_2d_projection_with_sign_correction"],
)
def test_projection_does_not_mutate_caller(name):
    """test_svd_no_side_effect.py: test_get_2d_projection_does_not_mutate_caller,
    test_get_2d_projection_kernel_does_not_mutate_caller,
    test_get_2d_projection_with_sign_correction_does_not_mutate_caller."""
    a = _sample_batch_with_nan()
    assert np.isnan(a).any()
    snapshot = a.copy()
    getattr(shim_svd, name)(a)
    assert np.array_equal(a, snapshot, equal_nan=True), f"{name} mutated its argument"


# --- utils.find_layers --------------------------------------------------------------------


@needs_grad_cam
def test_find_layers_match_grad_cam(resnet):
    from pytorch_grad_cam.utils import find_layers

    for types in ([nn.Conv2d], [nn.BatchNorm2d, nn.ReLU], [nn.Module]):
        ours = shim_fl.find_layer_types_recursive(resnet, types)
        assert ours == find_layers.find_layer_types_recursive(resnet, types)
    assert len(shim_fl.find_layer_types_recursive(resnet, [nn.Conv2d])) == 20
    assert shim_fl.find_layer_types_recursive(resnet, [nn.Module]) == []  # exact types

    def wide(layer):
        return isinstance(layer, nn.Conv2d) and layer.out_channels >= 256

    ours = shim_fl.find_layer_predicate_recursive(resnet, wide)
    assert ours == find_layers.find_layer_predicate_recursive(resnet, wide)
    assert ours and all(wide(m) for m in ours)
    assert ours == [m for m in resnet.modules() if wide(m)]  # parents before children


@needs_grad_cam
def test_replace_layers_match_grad_cam(resnet):
    from pytorch_grad_cam.utils import find_layers

    ours, theirs = copy.deepcopy(resnet), copy.deepcopy(resnet)
    new = nn.Identity()
    assert shim_fl.replace_layer_recursive(ours, ours.layer3[1].conv2, new)
    assert find_layers.replace_layer_recursive(theirs, theirs.layer3[1].conv2, new)
    assert ours.layer3[1].conv2 is new and str(ours) == str(theirs)
    assert not shim_fl.replace_layer_recursive(ours, nn.ReLU(), new)  # not in the model

    ours, theirs = copy.deepcopy(resnet), copy.deepcopy(resnet)
    tanh = nn.Tanh()
    assert shim_fl.replace_all_layer_type_recursive(ours, nn.ReLU, tanh) is None
    find_layers.replace_all_layer_type_recursive(theirs, nn.ReLU, tanh)
    assert str(ours) == str(theirs)
    assert not any(isinstance(m, nn.ReLU) for m in ours.modules())
    assert ours.layer4[1].relu is tanh
    assert sum(isinstance(m, nn.ReLU) for m in resnet.modules()) == 9  # the original untouched


@pytest.mark.parametrize("base", ["GradCAM", "EigenCAM", "LayerCAM"])
def test_refine_cam_arcc_scores(base):
    """test_refine_cam.py::test_refine_cam, its ARCC part (the shapes are ported in
    test_grad_cam_ported.py): ARCC of RefineCAM's maps with RefineCAM as the base method,
    one score per image, each in [0, 1]; on the small CNN, batch 2."""
    import camkit.compat.pytorch_grad_cam as shim

    model = small_cnn()
    x, batch = images(2, 32), 2
    targets = [ClassifierOutputTarget(3) for _ in range(batch)]
    cam = until_landed(
        shim.RefineCAM,
        model=model,
        target_layers=[model[0][1], model[0][3]],
        base_method=getattr(shim, base),
    )
    grayscale_cam = cam(input_tensor=x, targets=targets)
    metric = shim_arcc.ARCC(base_method=cam)
    scores = metric(input_tensor=x, grayscale_cams=grayscale_cam, targets=targets, model=model)
    assert len(scores) == batch
    assert np.all(scores >= 0) and np.all(scores <= 1)
