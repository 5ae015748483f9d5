"""More of torchcam 0.5.0's own tests (its ``tests/`` folder), re-expressed against
``camkit.compat.torchcam``: the same inputs and assertions, models without downloaded weights,
smaller inputs where the original's only need is a feature map of some size. Each test's
docstring names the original test it comes from."""

from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy
from functools import partial
from operator import itemgetter

import pytest
import torch
from compat_helpers import HAS_CONTRIB, needs_contrib, needs_torchcam, until_landed
from torch import Tensor, nn

from camkit.compat.torchcam import methods as shim
from camkit.compat.torchcam.metrics import ClassificationMetric, DeletionInsertionMetric
from camkit.errors import ConfigError, InputError


def _verify_cam(cam: Tensor, shape: tuple[int, ...]) -> None:
    assert isinstance(cam, Tensor)
    assert cam.shape == shape
    assert not torch.isnan(cam).any()


def _tiny_model(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(1),
        nn.Linear(4, num_classes),
    ).eval()


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def mobilenet() -> nn.Module:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    return _frozen(mobilenet_v2(weights=None).eval())


def _img(batch: int = 1, size: int = 96) -> Tensor:
    x = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(0))
    return x.repeat(batch, 1, 1, 1).requires_grad_(True)


def _contrastive_scores(scores: Tensor, class_idx, comparison_idx, gamma: float) -> Tensor:
    batch = scores.shape[0]
    targets = [class_idx] * batch if isinstance(class_idx, int) else class_idx
    if isinstance(comparison_idx, int):
        references = [[comparison_idx]] * batch
    elif isinstance(comparison_idx[0], int):
        references = [comparison_idx] * batch
    else:
        references = comparison_idx
    chosen = scores.gather(1, torch.tensor(targets).view(-1, 1))
    return chosen - gamma * scores.gather(1, torch.tensor(references)).mean(1, keepdim=True)


# -- tests/test_methods_gradient.py --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer", "batch"),
    [
        ("GradCAM", "features.18.0", 1),
        ("GradCAMpp", "features.18.0", 1),
        ("SmoothGradCAMpp", lambda m: m.features[18][0], 1),
        ("SmoothGradCAMpp", "features.18.0", 1),
        ("XGradCAM", "features.18.0", 1),
        ("LayerCAM", "features.18.0", 1),
        ("LayerCAM", "features.18.0", 2),
    ],
)
def test_gradient_img_cams_on_mobilenet_v2(mobilenet, name, layer, batch):
    """test_methods_gradient.py::test_img_cams (MobileNetV2 part; 96 px: a 3x3 map)."""
    layer = layer(mobilenet) if callable(layer) else layer
    with getattr(shim, name)(mobilenet, layer) as extractor:
        scores = mobilenet(_img(batch))
        _verify_cam(extractor(int(scores[0].argmax()), scores, retain_graph=True)[0], (batch, 3, 3))
        _verify_cam(extractor(list(range(batch)), scores)[0], (batch, 3, 3))


def test_gradcam_output_targets_leave_parameter_grads():
    """test_methods_gradient.py::test_gradcam_supports_per_sample_output_targets_without_
    touching_parameter_grads (a tensor output: the shim's targets read a sample's row)."""
    model = _tiny_model()
    with shim.GradCAM(model, "2") as extractor:
        scores = model(torch.rand(2, 3, 4, 4))
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        cams = extractor(scores=scores, targets=[lambda row: row[0], lambda row: row[1]])
    _verify_cam(cams[0], (2, 4, 4))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_smoothgradcampp_output_targets():
    """test_methods_gradient.py::test_smoothgradcampp_supports_output_targets."""
    model = _tiny_model()
    with shim.SmoothGradCAMpp(model, "2", num_samples=2) as extractor:
        model(torch.rand(2, 3, 4, 4))
        cams = extractor(targets=lambda row: row[0])
    _verify_cam(cams[0], (2, 4, 4))


def test_output_target_must_return_a_scalar_tensor():
    """test_methods_gradient.py::test_output_target_must_return_a_scalar_tensor."""
    model = _tiny_model()
    with shim.GradCAM(model, "2") as extractor:
        scores = model(torch.rand(1, 3, 4, 4))
        with pytest.raises(ValueError, match="scalar tensor"):
            extractor(scores=scores, targets=lambda row: row[:2])


@needs_contrib
def test_refinecam_output_targets():
    """test_methods_gradient.py::test_refinecam_supports_output_targets."""
    model = _tiny_model()
    with shim.RefineCAM(model, ["0", "2"], base_method=shim.LayerCAM) as extractor:
        scores = model(torch.rand(2, 3, 4, 4))
        cams = extractor(scores=scores, targets=lambda row: row[1])
    _verify_cam(cams[0], (2, 4, 4))


@needs_contrib
def test_finercam_rejects_output_targets():
    """test_methods_gradient.py::test_finercam_rejects_output_targets."""
    model = _tiny_model()
    with shim.FinerCAM(model, "2") as extractor:
        scores = model(torch.rand(1, 3, 4, 4))
        with pytest.raises(ValueError, match="does not support"):
            extractor(0, scores, targets=lambda row: row[0])


def test_layercam_fuse_cams():
    """test_methods_gradient.py::test_layercam_fuse_cams."""
    with pytest.raises(TypeError):
        shim.LayerCAM.fuse_cams(torch.zeros((3, 32, 32)))
    with pytest.raises(ValueError):
        shim.LayerCAM.fuse_cams([])
    cams = [torch.rand((1, 32, 32)), torch.rand((1, 16, 16))]
    assert torch.equal(cams[0], shim.LayerCAM.fuse_cams(cams[:1]))
    cam = shim.LayerCAM.fuse_cams(cams)
    assert isinstance(cam, Tensor) and cam.ndim == cams[0].ndim and cam.shape == (1, 32, 32)
    cam = shim.LayerCAM.fuse_cams(cams, (16, 16))
    assert isinstance(cam, Tensor) and cam.ndim == cams[0].ndim and cam.shape == (1, 16, 16)


@needs_contrib
def test_refinecam_fuse_cams():
    """test_methods_gradient.py::test_refinecam_fuse_cams (``normalized=False`` is a
    ConfigError in the shim: camkit's refine always normalizes, docs/migrating.md)."""
    cams = [torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]), torch.tensor([[[3.0, 2.0], [1.0, 0.0]]])]
    originals = [cam.clone() for cam in cams]
    with pytest.raises(ConfigError):
        shim.RefineCAM.fuse_cams(cams, normalized=False)
    assert torch.allclose(shim.RefineCAM.fuse_cams(cams), torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]))
    assert all(map(torch.equal, cams, originals))
    larger = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4)
    assert shim.RefineCAM.fuse_cams([cams[0], larger]).shape == (1, 4, 4)
    assert shim.RefineCAM.fuse_cams([cams[0], larger], (2, 2)).shape == (1, 2, 2)
    assert shim.RefineCAM.fuse_cams(cams[:1]).shape == cams[0].shape
    volume = torch.arange(8, dtype=torch.float32).reshape(1, 2, 2, 2)
    assert shim.RefineCAM.fuse_cams([volume, volume.flip(-1)]).shape == volume.shape
    with pytest.raises(TypeError):
        shim.RefineCAM.fuse_cams(torch.zeros((1, 2, 2)))
    with pytest.raises(ValueError):
        shim.RefineCAM.fuse_cams([])


@needs_contrib
@pytest.mark.parametrize("base", ["GradCAMpp", "LayerCAM", "ScoreCAM"])
def test_refinecam_base_methods(base):
    """test_methods_gradient.py::test_refinecam_base_methods."""
    model = _tiny_model()
    base_method = getattr(shim, base)
    with shim.RefineCAM(model, ["0", "2"], base_method=base_method) as extractor:
        scores = model(torch.rand((2, 3, 8, 8)))
        cams = extractor([0, 1], scores)
        assert len(cams) == 1
        _verify_cam(cams[0], (2, 8, 8))
        assert extractor.model is model
        assert extractor.target_names == ["0", "2"]
        assert repr(extractor) == f"RefineCAM(base_method={base}, target_layer=['0', '2'])"
    assert extractor.base_cam.hook_handles == []


@needs_contrib
def test_refinecam_metric_compatibility():
    """test_methods_gradient.py::test_refinecam_metric_compatibility."""
    model = _tiny_model()
    with shim.RefineCAM(model, ["0", "2"]) as extractor:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(torch.rand((1, 3, 8, 8)))
        assert set(metric.summary()) == {"avg_drop", "conf_increase"}


@needs_contrib
def test_refinecam_rejects_invalid_configuration():
    """test_methods_gradient.py::test_refinecam_rejects_invalid_configuration."""
    model = _tiny_model()
    with pytest.raises(ValueError, match="two or more layers"):
        shim.RefineCAM(model, ["0"])
    with pytest.raises(TypeError, match="CAM extractor class"):
        shim.RefineCAM(model, ["0", "2"], base_method=nn.Module)


@needs_contrib
@pytest.mark.parametrize("base", ["GradCAM", "GradCAMpp", "LayerCAM"])
@pytest.mark.parametrize(
    ("class_idx", "comparison_idx"), [(0, 2), ([0, 1], [2]), ([0, 1], [[1, 2], [0, 2]])]
)
@pytest.mark.parametrize("normalized", [False, True])
def test_finercam_matches_manual_contrastive_score(base, class_idx, comparison_idx, normalized):
    """test_methods_gradient.py::test_finercam_matches_manual_contrastive_score (the base
    extractor of the shim on the hand-made contrastive score; GradCAMpp with the base's own
    weights on both sides)."""
    model = _tiny_model()
    manual = deepcopy(model)
    x = torch.rand((2, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    base_method = getattr(shim, base)
    with shim.FinerCAM(model, "2", base_method=base_method, gamma=0.6) as extractor:
        scores = model(x)
        original = scores.detach().clone()
        cams = extractor(class_idx, scores, comparison_idx, normalized)
    with base_method(manual, "2") as base_cam:
        contrastive = _contrastive_scores(manual(x), class_idx, comparison_idx, 0.6)
        expected = base_cam([0, 0], contrastive, normalized)
    assert len(cams) == len(expected) == 1
    torch.testing.assert_close(cams[0], expected[0])
    assert torch.equal(scores.detach(), original)
    assert scores.shape == (2, 3)


@needs_contrib
@pytest.mark.parametrize("num_classes", [2, 3])
def test_finercam_caps_automatic_references_for_small_outputs(num_classes):
    """test_methods_gradient.py::test_finercam_caps_automatic_references_for_small_outputs."""
    model = _tiny_model(num_classes)
    with shim.FinerCAM(model, "2") as extractor:
        scores = model(torch.rand((1, 3, 8, 8)))
        _verify_cam(extractor(0, scores, normalized=False)[0], (1, 8, 8))


@needs_contrib
def test_finercam_gamma_zero_matches_base_cam():
    """test_methods_gradient.py::test_finercam_gamma_zero_matches_base_cam."""
    model = _tiny_model()
    manual = deepcopy(model)
    x = torch.rand((2, 3, 8, 8))
    with shim.FinerCAM(model, "2", gamma=0) as extractor:
        cams = extractor([0, 1], model(x), normalized=False)
    with shim.GradCAM(manual, "2") as base_cam:
        expected = base_cam([0, 1], manual(x), normalized=False)
    torch.testing.assert_close(cams[0], expected[0])


@needs_contrib
def test_finercam_aggregates_before_relu():
    """test_methods_gradient.py::test_finercam_aggregates_before_relu."""

    class ContrastiveModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(1, 1, 1, bias=False)
            self.pool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Linear(1, 3, bias=False)
            with torch.no_grad():
                self.features.weight.fill_(1)
                self.classifier.weight.copy_(torch.tensor([[1.0], [3.0], [-1.0]]))

        def forward(self, x: Tensor) -> Tensor:
            return self.classifier(self.pool(self.features(x)).flatten(1))

    model, x = ContrastiveModel().eval(), torch.ones((1, 1, 2, 2))
    with shim.FinerCAM(model, "features", gamma=1) as extractor:
        aggregated = extractor(0, model(x), [1, 2], normalized=False)[0]
    pairwise = []
    for reference in [1, 2]:
        pair_model = deepcopy(model)
        with shim.GradCAM(pair_model, "features") as extractor:
            contrastive = _contrastive_scores(pair_model(x), 0, [reference], 1)
            pairwise.append(extractor(0, contrastive, normalized=False)[0])
    assert torch.count_nonzero(aggregated) == 0
    assert torch.stack(pairwise).mean(0).max() > 0


@needs_contrib
def test_finercam_multiple_layers_and_compute_cams():
    """test_methods_gradient.py::test_finercam_multiple_layers_and_compute_cams."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(1),
        nn.Linear(4, 3),
    ).eval()
    with shim.FinerCAM(model, ["0", "2"]) as extractor:
        scores = model(torch.rand((1, 3, 8, 8)))
        cams = extractor.compute_cams(0, scores, [1, 2], normalized=False)
    assert [cam.shape for cam in cams] == [(1, 8, 8), (1, 4, 4)]


@needs_contrib
def test_finercam_video_cam():
    """test_methods_gradient.py::test_finercam_video_cam."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d((1, 1, 1)),
        nn.Flatten(1),
        nn.Linear(4, 3),
    ).eval()
    with shim.FinerCAM(model, "0", base_method=shim.LayerCAM) as extractor:
        scores = model(torch.rand((1, 3, 8, 16, 16), requires_grad=True))
        cams = extractor(0, scores, comparison_idx=[1, 2])
    _verify_cam(cams[0], (1, 8, 16, 16))


@needs_contrib
def test_finercam_preserves_dtype_and_device():
    """test_methods_gradient.py::test_finercam_preserves_dtype_and_device (CPU; camkit
    computes maps in float32 whatever the model's dtype: a documented difference)."""
    model = _tiny_model().to(dtype=torch.float64)
    with shim.FinerCAM(model, "2") as extractor:
        scores = model(torch.rand((1, 3, 8, 8), dtype=torch.float64))
        cams = extractor(0, scores, comparison_idx=[1, 2], normalized=False)
    assert scores.dtype == torch.float64 and cams[0].dtype == torch.float32
    assert cams[0].device == scores.device and torch.isfinite(cams[0]).all()


@needs_contrib
def test_finercam_lifecycle_repr_and_metric_compatibility():
    """test_methods_gradient.py::test_finercam_lifecycle_repr_and_metric_compatibility (the
    layer's hook count is the shim's own; what is kept: hooks while entered, none after)."""
    model = _tiny_model()
    layer = model[2]
    assert len(layer._forward_hooks) == 0
    with shim.FinerCAM(model, "2") as extractor:
        assert len(layer._forward_hooks) > 0
        assert extractor.model is model
        assert extractor.target_names == ["2"]
        assert repr(extractor) == (
            "FinerCAM(base_method=GradCAM, target_layer=['2'], gamma=0.6, num_references=3)"
        )
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(torch.rand((1, 3, 8, 8)))
        assert set(metric.summary()) == {"avg_drop", "conf_increase"}
    assert len(layer._forward_hooks) == 0
    assert extractor.base_cam.hook_handles == []


@needs_contrib
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"base_method": shim.ScoreCAM}, TypeError),
        ({"base_method": shim.SmoothGradCAMpp}, TypeError),
        ({"base_method": nn.Identity()}, TypeError),
        ({"gamma": -0.1}, ValueError),
        ({"gamma": float("inf")}, ValueError),
        ({"gamma": float("nan")}, ValueError),
        ({"num_references": 0}, ValueError),
    ],
)
def test_finercam_rejects_invalid_configuration(kwargs, error):
    """test_methods_gradient.py::test_finercam_rejects_invalid_configuration (the error
    types; the messages are camkit's)."""
    with pytest.raises(error):
        shim.FinerCAM(_tiny_model(), "2", **kwargs)


@needs_contrib
def test_finercam_rejects_invalid_scores_targets_and_references():
    """test_methods_gradient.py::test_finercam_rejects_invalid_scores_targets_and_references
    (the error types; the messages are camkit's)."""
    model = _tiny_model()
    with shim.FinerCAM(model, "2") as extractor:
        with pytest.raises(ValueError, match="scores is required"):
            extractor(0)
        with pytest.raises(TypeError, match="scores must be a tensor"):
            extractor(0, [[1.0, 2.0]])
        with pytest.raises(ValueError):
            extractor(0, torch.rand(3))
        scores = model(torch.rand((2, 3, 8, 8)))
        with pytest.raises(TypeError):
            extractor(True, scores)
        with pytest.raises(TypeError, match="contain integers"):
            extractor([0, True], scores)
        with pytest.raises(ValueError):
            extractor([0], scores)
        with pytest.raises(ValueError):
            extractor([0, 3], scores)
        with pytest.raises(ValueError, match="cannot be empty"):
            extractor([0, 1], scores, [])
        with pytest.raises(TypeError, match="integer, a list, or a nested list"):
            extractor([0, 1], scores, (2,))
        with pytest.raises(ValueError, match="target class"):
            extractor([0, 1], scores, [0, 2])
        with pytest.raises(ValueError, match="duplicates"):
            extractor([0, 1], scores, [2, 2])
        with pytest.raises(ValueError):
            extractor([0, 1], scores, [2, 3])
        with pytest.raises(TypeError, match="contain integers"):
            extractor([0, 1], scores, [True])
        with pytest.raises(ValueError):
            extractor([0, 1], scores, [[1, 2]])
        with pytest.raises(ValueError, match="cannot be empty"):
            extractor([0, 1], scores, [[], []])
        with pytest.raises(ValueError):
            extractor([0, 1], scores, [[1], [0, 2]])
        with pytest.raises(TypeError, match="contain integers"):
            extractor([0, 1], scores, [[True], [0]])
        with pytest.raises(TypeError, match="integers or lists"):
            extractor([0, 1], scores, [2, [0]])


@needs_contrib
def test_refinecam_shared_wrapper_regression():
    """test_methods_gradient.py::test_refinecam_shared_wrapper_regression (the base's hooks
    through its public ``disable_hooks`` / ``enable_hooks``)."""
    model = _tiny_model()
    extractor = shim.RefineCAM(model, ["0", "2"])
    with extractor as entered:
        assert entered is extractor
        extractor.disable_hooks()
        assert not extractor.base_cam._hooks_enabled
        extractor.enable_hooks()
        scores = model(torch.rand((1, 3, 8, 8)))
        _verify_cam(extractor(0, scores)[0], (1, 8, 8))
        assert repr(extractor) == "RefineCAM(base_method=GradCAMpp, target_layer=['0', '2'])"
    assert extractor.base_cam.hook_handles == []


def test_gradcam_does_not_accumulate_hook_handles(mobilenet):
    """test_methods_gradient.py::test_gradcam_does_not_accumulate_hook_handles."""
    with shim.GradCAM(mobilenet, "features.18.0") as extractor:
        initial = len(extractor.hook_handles)
        for _ in range(3):
            scores = mobilenet(_img())
            extractor(int(scores[0].argmax()), scores, retain_graph=True)
        assert len(extractor.hook_handles) == initial


# -- tests/test_methods_activation.py ------------------------------------------------------


@pytest.mark.parametrize(
    ("fc_layer", "batch"),
    [(None, 1), (None, 2), ("classifier.1", 1), (lambda m: m.classifier[1], 1)],
)
def test_cam_img_cams_on_mobilenet_v2(mobilenet, fc_layer, batch):
    """test_methods_activation.py::test_img_cams (96 px: a 3x3 map)."""
    kwargs = {}
    if fc_layer is not None:
        kwargs["fc_layer"] = fc_layer(mobilenet) if callable(fc_layer) else fc_layer
    with shim.CAM(mobilenet, input_shape=(3, 96, 96), **kwargs) as extractor, torch.no_grad():
        scores = mobilenet(_img(batch))
        _verify_cam(extractor(int(scores[0].argmax()), scores)[0], (batch, 3, 3))
        _verify_cam(extractor(list(range(batch)), scores)[0], (batch, 3, 3))


def test_scorecam_torchvision_integration(mobilenet):
    """test_methods_activation.py::test_scorecam_torchvision_integration."""
    x = torch.ones((1, 3, 16, 16))
    with shim.ScoreCAM(mobilenet, mobilenet.features[1].conv[2]) as extractor, torch.no_grad():
        scores = mobilenet(x)
        _verify_cam(extractor(int(scores[0].argmax()), scores)[0], (1, 8, 8))


def test_cam_conv1x1():
    """test_methods_activation.py::test_cam_conv1x1 (a 1x1 convolution as the classifier)."""
    torch.manual_seed(0)
    model = _frozen(
        nn.Sequential(
            nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(8, 16, 3, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
            ),
            nn.Conv2d(16, 1, 1),
            nn.Flatten(1),
        )
    )
    with shim.CAM(model, fc_layer="1", input_shape=(3, 32, 32)) as extractor, torch.no_grad():
        scores = model(torch.rand((1, 3, 32, 32)))
        _verify_cam(extractor(int(scores[0].argmax()), scores)[0], (1, 32, 32))


def _scorecam_inputs() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(1),
        nn.Linear(2, 3),
    ).double()
    return model.eval(), torch.rand((2, 1, 8, 8), dtype=torch.float64)


def _scorecam_kwargs(name: str, batch_size: int) -> dict:
    return {"batch_size": batch_size} | ({} if name == "ScoreCAM" else {"num_samples": 2})


@pytest.mark.parametrize("name", ["ScoreCAM", "SSCAM", "ISCAM"])
@pytest.mark.parametrize("class_idx", [1, [1, 2]])
def test_scorecam_chunk_parity(name, class_idx):
    """test_methods_activation.py::test_scorecam_chunk_parity (a float64 model; the maps
    are float32, camkit's precision: a documented difference)."""
    results = []
    for batch_size in (3, 64):
        model, x = _scorecam_inputs()
        with getattr(shim, name)(model, ["1", "3"], **_scorecam_kwargs(name, batch_size)) as ext:
            scores = model(x)
            torch.manual_seed(1)
            results.append(ext(class_idx, scores))
    assert [cam.shape for cam in results[0]] == [(2, 8, 8), (2, 8, 8)]
    assert all(
        cam.dtype == torch.float32 and cam.device.type == "cpu" and torch.isfinite(cam).all()
        for cam in results[0]
    )
    for chunked, unchunked in zip(*results, strict=True):
        torch.testing.assert_close(chunked, unchunked)


@pytest.mark.parametrize("name", ["ScoreCAM", "SSCAM", "ISCAM"])
def test_scorecam_preserves_disabled_hooks(name):
    """test_methods_activation.py::test_scorecam_preserves_disabled_hooks."""
    model, x = _scorecam_inputs()
    with getattr(shim, name)(model, ["1", "3"], **_scorecam_kwargs(name, 3)) as extractor:
        scores = model(x)
        extractor.disable_hooks()
        torch.manual_seed(1)
        extractor(1, scores)
        assert not extractor._hooks_enabled


@pytest.mark.parametrize("name", ["ScoreCAM", "SSCAM", "ISCAM"])
def test_score_cams_support_per_sample_output_targets(name):
    """test_methods_activation.py::test_score_cams_support_per_sample_output_targets (a
    tensor output: each sample's target reads its row)."""
    model = _tiny_model()
    kwargs = {"batch_size": 2} | ({} if name == "ScoreCAM" else {"num_samples": 2})
    with getattr(shim, name)(model, "2", **kwargs) as extractor:
        scores = model(torch.rand(2, 3, 4, 4))
        cams = extractor(scores=scores, targets=[lambda row: row[0], lambda row: row[1]])
    _verify_cam(cams[0], (2, 4, 4))


@pytest.mark.parametrize(("name", "num_samples"), [("ScoreCAM", None), ("SSCAM", 4), ("ISCAM", 4)])
def test_activation_video_cams(name, num_samples):
    """test_methods_activation.py::test_video_cams (the Score-CAM family; CAM is ported in
    test_torchcam_shim.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(
            nn.Conv3d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d((1, 1, 1)),
        ),
        nn.Flatten(1),
        nn.Linear(16, 1),
    ).eval()
    kwargs = {"batch_size": 3} | ({"num_samples": num_samples} if num_samples else {})
    with getattr(shim, name)(model, "0.3", **kwargs) as extractor, torch.no_grad():
        scores = model(torch.rand((1, 3, 8, 16, 16)))
        _verify_cam(extractor(int(scores[0].argmax()), scores)[0], (1, 8, 16, 16))


# -- tests/test_methods_transformer.py (the methods other than LeGrad) ----------------------


def _build_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    torch.nn.init.normal_(model.heads.head.weight)
    return model.eval()


def _reshape_transform(t: Tensor) -> Tensor:
    return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[-1]).permute(0, 3, 1, 2)


def test_reshape_transform_validation():
    """test_methods_transformer.py::test_reshape_transform_validation."""
    model = _build_vit()
    with pytest.raises(TypeError, match="reshape_transform"):
        shim.LayerCAM(model, "encoder.layers.encoder_layer_1.ln_1", reshape_transform=1)
    with pytest.raises(ValueError, match="target_layer"):
        shim.LayerCAM(model, reshape_transform=_reshape_transform)


@pytest.mark.parametrize("name", ["LayerCAM", "ScoreCAM"])
def test_vit_cams_with_reshape_transform(name):
    """test_methods_transformer.py::test_layercam_with_reshape_transform and
    ::test_scorecam_with_reshape_transform (the map's shape and spread; ``hook_a`` holds the
    layer's raw token output in the shim, camkit reads tokens itself)."""
    model = _build_vit()
    layer = "encoder.layers.encoder_layer_1.ln_1"
    kwargs = {"batch_size": 4} if name == "ScoreCAM" else {}
    with getattr(shim, name)(model, layer, reshape_transform=_reshape_transform, **kwargs) as ext:
        scores = model(torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        cam = ext(int(scores[0].argmax()), scores)[0]
        assert cam.shape == (1, 4, 4)
        assert torch.isfinite(cam).all()
        assert cam.std() > 0


# -- tests/test_metrics.py -----------------------------------------------------------------


class _ConvClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.fill_(1)
            self.conv2.weight.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        score = self.conv2(self.conv1(x)).flatten(1).sum(dim=1)
        return torch.stack((score, 1 - score), dim=1)


def _exact_input() -> Tensor:
    return torch.tensor([[[[0.4, 0.3], [0.2, 0.1]]]])


def test_classification_metric():
    """test_metrics.py::test_classification_metric (summary keys and range, the model's
    train/eval flags restored, the hooks left enabled; the sample count through ``total``
    where the shim keeps it)."""
    model = _ConvClassifier()
    model.train()
    model.conv1.eval()
    modes = [m.training for m in model.modules()]
    x = _exact_input().expand(2, -1, -1, -1).clone().requires_grad_(True)
    with shim.LayerCAM(model, "conv2") as extractor:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(x, class_idx=0)
        metric.update(x, class_idx=[0, 0])
        metric.update(x)
        assert extractor._hooks_enabled
    assert metric.summary().keys() == {"avg_drop", "conf_increase"}
    assert all(0 <= value <= 1 for value in metric.summary().values())
    if hasattr(metric, "total"):
        assert metric.total == 6
    assert [m.training for m in model.modules()] == modes


class _SumClassifier(nn.Module):
    """Scores ``(s, 1 - s)`` with ``s`` the input's sum; records its inputs; can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.identity = nn.Identity()
        self.calls = 0
        self.fail_on_call: int | None = None
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("scoring failed")
        self.seen.append(x.detach().clone())
        score = self.identity(x).flatten(1).sum(dim=1)
        return torch.stack((score, 1 - score), dim=1)


class _FixedExtractor:
    """torchcam's extractor protocol with a fixed map: the metrics take any extractor."""

    def __init__(self, model: nn.Module, cam: Tensor) -> None:
        self.model, self.cam, self._hooks_enabled, self.class_idx = model, cam, True, None

    def __call__(self, class_idx=None, scores=None, _normalized=True, **_kwargs):
        self.class_idx = class_idx
        cam = self.cam.to(scores)
        if cam.shape[0] == 1 and scores.shape[0] > 1:
            cam = cam.expand(scores.shape[0], *cam.shape[1:])
        return [cam.clone()]

    @staticmethod
    def fuse_cams(cams):
        return torch.stack(cams).max(dim=0).values

    @contextmanager
    def _hooks_off(self):
        previous, self._hooks_enabled = self._hooks_enabled, False
        try:
            yield
        finally:
            self._hooks_enabled = previous


def _fixed_metric(*, steps=2, batch_size=32, baseline=None) -> DeletionInsertionMetric:
    extractor = _FixedExtractor(_SumClassifier(), _exact_input().squeeze(1))
    return DeletionInsertionMetric(extractor, steps=steps, batch_size=batch_size, baseline=baseline)


def test_classification_metric_exact_value():
    """test_metrics.py::test_classification_metric_exact_value (without torchcam's 1e-7 in
    the denominator: within approx's tolerance)."""
    extractor = _FixedExtractor(_SumClassifier(), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    metric = ClassificationMetric(extractor)
    metric.update(_exact_input(), class_idx=0)
    assert metric.summary() == pytest.approx({"avg_drop": 0.6 / (1 + 1e-7), "conf_increase": 0})


def test_deletion_insertion_complete_curves_and_auc():
    """test_metrics.py::test_deletion_insertion_complete_curves_and_auc (through ``update``:
    the curves are camkit's ``perturbation_curve``, the AUCs the original's)."""
    metric = _fixed_metric(steps=2)
    metric.update(_exact_input(), class_idx=0)
    assert metric.summary() == pytest.approx({"deletion_auc": 0.4, "insertion_auc": 0.6})


def test_classification_metric_accepts_output_targets():
    """test_metrics.py::test_classification_metric_accepts_output_targets."""
    extractor = _FixedExtractor(_SumClassifier(), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    metric = ClassificationMetric(extractor)
    metric.update(_exact_input(), targets=itemgetter(0))
    assert metric.summary() == pytest.approx({"avg_drop": 0.6 / (1 + 1e-7), "conf_increase": 0})


def test_deletion_insertion_accepts_output_targets():
    """test_metrics.py::test_deletion_insertion_accepts_output_targets."""
    metric = _fixed_metric(steps=2)
    metric.update(_exact_input(), targets=itemgetter(0))
    assert metric.summary() == pytest.approx({"deletion_auc": 0.4, "insertion_auc": 0.6})


def test_deletion_insertion_non_divisible_steps():
    """test_metrics.py::test_deletion_insertion_non_divisible_steps (through ``update``)."""
    x = torch.tensor([[[[0.3, 0.25, 0.2, 0.15, 0.1]]]])
    extractor = _FixedExtractor(_SumClassifier(), x.squeeze(1))
    metric = DeletionInsertionMetric(extractor, steps=3)
    metric.update(x, class_idx=0)
    assert metric.summary() == pytest.approx({"deletion_auc": 0.41, "insertion_auc": 0.59})


def test_deletion_insertion_chunked_parity():
    """test_metrics.py::test_deletion_insertion_chunked_parity."""
    x = _exact_input().expand(2, -1, -1, -1).clone()
    chunked, unchunked = (
        _fixed_metric(steps=4, batch_size=1),
        _fixed_metric(steps=4, batch_size=100),
    )
    chunked.update(x, class_idx=[0, 0])
    unchunked.update(x, class_idx=[0, 0])
    assert chunked.summary() == pytest.approx(unchunked.summary())


def test_deletion_insertion_custom_baselines_and_non_mutation():
    """test_metrics.py::test_deletion_insertion_custom_baselines_and_non_mutation."""
    x, baseline = _exact_input(), torch.tensor(0.05)
    original_x, original_baseline = x.clone(), baseline.clone()
    calls = []

    def baseline_fn(_t: Tensor) -> Tensor:
        calls.append(1)
        return baseline

    tensor_metric, callable_metric = (
        _fixed_metric(baseline=baseline),
        _fixed_metric(baseline=baseline_fn),
    )
    tensor_metric.update(x, class_idx=0)
    callable_metric.update(x, class_idx=0)
    assert tensor_metric.summary() == pytest.approx(callable_metric.summary())
    assert len(calls) == 1
    torch.testing.assert_close(x, original_x)
    torch.testing.assert_close(baseline, original_baseline)


@pytest.mark.parametrize(("class_idx", "expected"), [(0, 0), ([0, 1], [0, 1]), (None, [0, 1])])
def test_deletion_insertion_class_indices(class_idx, expected):
    """test_metrics.py::test_deletion_insertion_class_indices."""
    extractor = _FixedExtractor(_SumClassifier(), _exact_input().squeeze(1))
    metric = DeletionInsertionMetric(extractor, steps=2)
    metric.update(torch.cat((_exact_input(), _exact_input() / 5)), class_idx=class_idx)
    assert extractor.class_idx == expected
    assert set(metric.summary()) == {"deletion_auc", "insertion_auc"}


@pytest.mark.parametrize(
    ("class_idx", "error"),
    [(2, ValueError), ("0", TypeError), ([0], ValueError), ([0, 2], ValueError),
     ([False, 0], TypeError)],
)  # fmt: skip
def test_metrics_reject_invalid_class_indices(class_idx, error):
    """test_metrics.py::test_metrics_reject_invalid_class_indices."""
    metric = ClassificationMetric(_FixedExtractor(_SumClassifier(), _exact_input().squeeze(1)))
    with pytest.raises(error):
        metric.update(_exact_input().expand(2, -1, -1, -1), class_idx=class_idx)


@pytest.mark.parametrize("metric_cls", [ClassificationMetric, DeletionInsertionMetric])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_metrics_spatial_inputs(metric_cls, spatial_dims):
    """test_metrics.py::test_metrics_spatial_inputs (deletion and insertion of volumes are
    an ``InputError`` in the shim: camkit's perturbation curves take images)."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    model = _ConvClassifier()
    model.conv1, model.conv2 = conv(1, 1, 1, bias=False), conv(1, 1, 1, bias=False)
    with torch.no_grad():
        model.conv1.weight.fill_(1)
        model.conv2.weight.fill_(1)
    shape = (1, 1, 2, 2) if spatial_dims == 2 else (1, 1, 2, 2, 2)
    with shim.LayerCAM(model, "conv2") as extractor:
        kwargs = {} if metric_cls is ClassificationMetric else {"steps": 2, "batch_size": 2}
        metric = metric_cls(extractor, **kwargs)
        x = torch.full(shape, 1 / (2**spatial_dims))
        if spatial_dims == 3 and metric_cls is DeletionInsertionMetric:
            with pytest.raises(InputError, match="images"):
                metric.update(x, class_idx=0)
            return
        metric.update(x, class_idx=0)
    assert all(torch.isfinite(torch.tensor(list(metric.summary().values()))))


@pytest.mark.parametrize(
    "kind", ["ordinary", "multi-layer", "refinecam-wrapper", "finercam-wrapper"]
)
def test_deletion_insertion_extractor_protocols(kind):
    """test_metrics.py::test_deletion_insertion_extractor_protocols."""
    if "wrapper" in kind:
        pytest.importorskip("camkit_contrib")
    model = _ConvClassifier()
    factories = {
        "ordinary": lambda: shim.LayerCAM(model, "conv2"),
        "multi-layer": lambda: shim.LayerCAM(model, ["conv1", "conv2"]),
        "refinecam-wrapper": lambda: shim.RefineCAM(
            model, ["conv1", "conv2"], base_method=shim.LayerCAM
        ),
        "finercam-wrapper": lambda: shim.FinerCAM(
            model, "conv2", base_method=shim.LayerCAM, num_references=1
        ),
    }
    with factories[kind]() as extractor:
        metric = DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1), steps=1)
        metric.update(torch.full((1, 1, 2, 2), 0.25))
        hooks_enabled = getattr(extractor, "base_cam", extractor)._hooks_enabled
    assert hooks_enabled
    assert set(metric.summary()) == {"deletion_auc", "insertion_auc"}


def test_deletion_insertion_preserves_dtype_and_device():
    """test_metrics.py::test_deletion_insertion_preserves_dtype_and_device (CPU, float64)."""
    model = _SumClassifier().to(dtype=torch.float64)
    extractor = _FixedExtractor(model, _exact_input().squeeze(1))
    metric = DeletionInsertionMetric(extractor, steps=2, batch_size=1)
    metric.update(_exact_input().to(torch.float64), class_idx=0)
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in model.seen)


@pytest.mark.parametrize("metric_cls", [ClassificationMetric, DeletionInsertionMetric])
def test_metrics_restore_model_and_hooks_on_scoring_error(metric_cls):
    """test_metrics.py::test_metrics_restore_model_and_hooks_on_scoring_error."""
    model = _SumClassifier()
    model.train()
    model.identity.eval()
    modes = [m.training for m in model.modules()]
    model.fail_on_call = 2
    extractor = _FixedExtractor(model, _exact_input().squeeze(1))
    kwargs = {} if metric_cls is ClassificationMetric else {"steps": 2}
    metric = metric_cls(extractor, **kwargs)
    with pytest.raises(RuntimeError, match="scoring failed"):
        metric.update(_exact_input(), class_idx=0)
    assert [m.training for m in model.modules()] == modes
    assert extractor._hooks_enabled
    assert metric.total == 0


def test_deletion_insertion_reset():
    """test_metrics.py::test_deletion_insertion_reset."""
    metric = _fixed_metric()
    metric.update(_exact_input(), class_idx=0)
    metric.reset()
    assert metric.deletion == metric.insertion == 0
    assert metric.total == metric.nan_count == 0
    with pytest.raises(AssertionError, match="update"):
        metric.summary()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"steps": 0}, ValueError), ({"steps": 1.5}, TypeError), ({"batch_size": 0}, ValueError),
     ({"batch_size": 1.5}, TypeError), ({"baseline": 0}, TypeError)],
)  # fmt: skip
def test_deletion_insertion_rejects_invalid_configuration(kwargs, error):
    """test_metrics.py::test_deletion_insertion_rejects_invalid_configuration."""
    extractor = _FixedExtractor(_SumClassifier(), _exact_input().squeeze(1))
    with pytest.raises(error):
        DeletionInsertionMetric(extractor, **kwargs)


@pytest.mark.parametrize(
    ("baseline", "error"), [(lambda _x: 0, TypeError), (torch.zeros((3, 3)), ValueError)]
)
def test_deletion_insertion_rejects_invalid_baseline_result(baseline, error):
    """test_metrics.py::test_deletion_insertion_rejects_invalid_baseline_result."""
    with pytest.raises(error):
        _fixed_metric(baseline=baseline).update(_exact_input(), class_idx=0)


# -- tests/test_explain.py -----------------------------------------------------------------


class _TinyCNN(nn.Module):
    def __init__(self, *, count_forwards: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4, 3)
        self.count_forwards, self.forward_count = count_forwards, 0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_count += int(self.count_forwards)
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _x8() -> Tensor:
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_explain_predicted_class_with_automatic_cnn_target():
    """test_explain.py::test_explain_predicted_class_with_automatic_cnn_target."""
    from camkit.compat.torchcam.explain import explain

    result = explain(_TinyCNN().eval(), _x8(), class_names=["a", "b", "c"])
    assert result.logits.shape == (1, 3)
    assert result.logits.device.type == "cpu" and result.logits.dtype == torch.float32
    assert not result.logits.requires_grad
    assert set(result.cams) == {result.predicted_class_idx}
    assert result.cams[result.predicted_class_idx][0].shape == (8, 8)
    assert result.cams[result.predicted_class_idx][0].dtype == torch.float32
    assert result.target_layers == ("features",)
    assert result.method == "GradCAM"
    assert result.class_names == ("a", "b", "c")


@pytest.mark.parametrize("distinct", [True, False])
def test_explain_forwards(distinct):
    """test_explain.py::test_explain_runs_fresh_forward_for_distinct_expected_class and
    ::test_explain_reuses_map_when_expected_class_is_predicted."""
    from camkit.compat.torchcam.explain import explain

    model, x = _TinyCNN(count_forwards=True).eval(), _x8()
    predicted = int(model(x).argmax())
    expected = (predicted + 1) % 3 if distinct else predicted
    model.forward_count = 0
    result = explain(model, x, expected_class_idx=expected, target_layer="features.1")
    assert model.forward_count == (2 if distinct else 1)
    assert set(result.cams) == {predicted, expected}


def test_explain_supports_torchvision_vit_with_legrad(tmp_path):
    """test_explain.py::test_explain_supports_torchvision_vit_with_legrad (skipped until
    camkit has LeGrad)."""
    import json

    from PIL import Image

    from camkit.compat.torchcam.explain import explain

    model = _build_vit()
    until_landed(shim.LeGrad, model, list(model.encoder.layers)[-2:]).remove_hooks()
    result = explain( model, torch.randn(1, 3, 32, 32), method=shim.LeGrad,
        target_layer=list(model.encoder.layers)[-2:],
    )  # fmt: skip
    assert result.method == "LeGrad"
    assert result.target_layers == (
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
    )
    assert result.cams[result.predicted_class_idx][0].shape == (4, 4)
    assert torch.isfinite(result.cams[result.predicted_class_idx][0]).all()
    bundle = result.save(tmp_path / "vit", Image.new("RGB", (32, 32)))
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    artifact = manifest["classes"][str(result.predicted_class_idx)]["artifacts"][0]
    assert artifact["target_layers"] == list(result.target_layers)


def test_explain_rejects_invalid_requests():
    """test_explain.py::test_explain_rejects_invalid_requests (the public checks; the
    original also calls two private helpers)."""
    from camkit.compat.torchcam.explain import explain

    model, x = _TinyCNN(), _x8()
    with pytest.raises(TypeError):
        explain(None, x)
    with pytest.raises(ValueError, match="evaluation mode"):
        explain(model, x, target_layer="features.1")
    model.eval()
    with pytest.raises(TypeError):
        explain(model, None, target_layer="features.1")
    with pytest.raises(ValueError):
        explain(model, torch.randn(2, 3, 8, 8), target_layer="features.1")
    with pytest.raises(ValueError, match="floating-point"):
        explain(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), target_layer="features.1")
    with pytest.raises(TypeError):
        explain(model, x, expected_class_idx="0", target_layer="features.1")
    with pytest.raises(TypeError):
        explain(model, x, method=nn.Module, target_layer="features.1")
    with pytest.raises(TypeError):
        explain(model, x, method_kwargs=[], target_layer="features.1")
    with pytest.raises(ValueError):
        explain(model, x, expected_class_idx=3, target_layer="features.1")
    with pytest.raises(ValueError, match="class_names"):
        explain(model, x, class_names=["a"], target_layer="features.1")
    with pytest.raises(TypeError):
        explain(model, x, class_names=["a", "b", 3], target_layer="features.1")
    with pytest.raises(ValueError):
        explain(model, x, method_kwargs={"target_layer": "features.1"})


def test_explain_rejects_invalid_outputs():
    """test_explain.py::test_explain_rejects_invalid_outputs (tuple and non-finite outputs,
    inference mode; the original's injected non-finite map and changing output shape patch
    private helpers)."""
    from camkit.compat.torchcam.explain import explain

    class TupleModel(_TinyCNN):
        def forward(self, x: Tensor):
            out = super().forward(x)
            return out, out

    class NonFiniteModel(_TinyCNN):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(x) * float("nan")

    with pytest.raises(TypeError):
        explain(TupleModel().eval(), _x8(), target_layer="features.1")
    with pytest.raises(ValueError, match="non-finite"):
        explain(NonFiniteModel().eval(), _x8(), target_layer="features.1")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain(_TinyCNN().eval(), _x8(), target_layer="features.1")


def test_explain_cleans_hooks_and_preserves_model_state():
    """test_explain.py::test_explain_cleans_hooks_and_preserves_model_state."""
    from camkit.compat.torchcam.explain import explain

    model, x = _TinyCNN().eval(), _x8()
    parameter = next(model.parameters())
    parameter.grad = torch.ones_like(parameter)
    grad = parameter.grad
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    layer = model.features[1]
    hooks = (len(layer._forward_hooks), len(layer._forward_pre_hooks))
    explain(model, x, target_layer="features.1")
    assert hooks == (len(layer._forward_hooks), len(layer._forward_pre_hooks))
    assert parameter.grad is grad
    assert flags == [p.requires_grad for p in model.parameters()]
    assert modes == [m.training for m in model.modules()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert x.grad is None


def test_save_writes_complete_deterministic_bundle(tmp_path):
    """test_explain.py::test_save_writes_complete_deterministic_bundle."""
    import json

    import numpy as np
    from PIL import Image

    from camkit.compat.torchcam.explain import explain

    result = explain(
        _TinyCNN().eval(), _x8(), expected_class_idx=0, class_names=["a", "b", "c"],
        target_layer="features.1",
    )  # fmt: skip
    image = Image.fromarray(np.zeros((13, 19, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match="PIL image"):
        result.save(tmp_path / "bad-image", None)
    bundle = result.save(tmp_path / "bundle", image)
    expected_files = {"manifest.json"}
    for c in result.cams:
        expected_files |= {f"class-{c}-layer-0.npy", f"class-{c}-layer-0-heatmap.png"}
        expected_files.add(f"class-{c}-layer-0-overlay.png")
    assert {p.name for p in bundle.iterdir()} == expected_files
    for c, maps in result.cams.items():
        stored = np.load(bundle / f"class-{c}-layer-0.npy", allow_pickle=False)
        assert stored.dtype == np.float32 and np.array_equal(stored, maps[0].numpy())
        with Image.open(bundle / f"class-{c}-layer-0-heatmap.png") as heatmap:
            assert heatmap.mode == "L"
        with Image.open(bundle / f"class-{c}-layer-0-overlay.png") as overlay:
            assert overlay.size == image.size
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["schema_version"] == 1
    assert manifest["prediction"]["class_idx"] == result.predicted_class_idx
    assert manifest["expected"] == {"class_idx": 0, "class_name": "a"}
    assert manifest["image_size"] == [19, 13]
    assert manifest["target_layers"] == ["features.1"]
    for data in manifest["classes"].values():
        assert all("/" not in v for v in data["artifacts"][0].values() if isinstance(v, str))
    with pytest.raises(FileExistsError):
        result.save(bundle, image)


def test_save_writes_manifest_only_after_artifacts(tmp_path, monkeypatch):
    """test_explain.py::test_save_writes_manifest_only_after_artifacts."""
    from PIL import Image

    from camkit.compat.torchcam import explain as explain_module

    result = explain_module.explain(_TinyCNN().eval(), _x8(), target_layer="features.1")
    output_dir, image = tmp_path / "incomplete", Image.new("RGB", (8, 8))

    def fail_overlay(*_args, **_kwargs):
        raise RuntimeError("render failed")

    with monkeypatch.context() as patch:
        patch.setattr(explain_module, "overlay_mask", fail_overlay)
        with pytest.raises(RuntimeError, match="render failed"):
            result.save(output_dir, image)
    assert not output_dir.exists()
    assert result.save(output_dir, image) == output_dir


# -- tests/test_utils.py -------------------------------------------------------------------


def _legacy_overlay(img, mask, cmap, alpha: float = 0.7):
    """torchcam's overlay as its test writes it: resize, square, colour map, blend."""
    import numpy as np
    from PIL import Image

    overlay = mask.resize(img.size, resample=Image.Resampling.BICUBIC)
    heat = (255 * cmap(np.asarray(overlay) ** 2)[:, :, :3]).astype(np.uint8)
    bg = np.asarray(img) if len(img.getbands()) == 3 else np.asarray(img)[..., None].repeat(3, -1)
    return (alpha * bg + (1 - alpha) * heat).astype(np.uint8)


@pytest.mark.parametrize(("mode", "shape"), [("P", (5, 6)), ("HSV", (5, 6, 3))])
def test_overlay_mask_preserves_raw_band_modes(mode, shape):
    """test_utils.py::test_overlay_mask_preserves_raw_band_modes (a callable colormap: named
    ones are camkit's, a few levels from matplotlib's)."""
    import numpy as np
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    colors = pytest.importorskip("matplotlib.colors")
    cmap = colors.ListedColormap(["black", "red", "white"])
    values = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    img = Image.frombytes(mode, (shape[1], shape[0]), values.tobytes())
    mask = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    expected = _legacy_overlay(img, mask, cmap)
    actual = np.asarray(overlay_mask(img, mask, cmap))
    assert np.abs(expected.astype(np.int16) - actual.astype(np.int16)).max() <= 1


def test_overlay_mask_preserves_nan_alpha():
    """test_utils.py::test_overlay_mask_preserves_nan_alpha (matplotlib's jet for the legacy
    overlay; with a NaN alpha the colormap does not change the pixels)."""
    import numpy as np
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    matplotlib = pytest.importorskip("matplotlib")
    img = Image.fromarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3))
    mask = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5))
    with pytest.warns(RuntimeWarning):
        expected = _legacy_overlay(img, mask, matplotlib.colormaps["jet"], alpha=float("nan"))
    with pytest.warns(RuntimeWarning):
        actual = np.asarray(overlay_mask(img, mask, alpha=float("nan")))
    np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("alpha", [0, -0.1, 1.0, "0.5", None])
def test_overlay_mask_invalid_alpha(alpha):
    """test_utils.py::test_overlay_mask_invalid_alpha."""
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    with pytest.raises(ValueError, match="alpha argument is expected to be of type float between"):
        overlay_mask(Image.new("RGB", (4, 4)), Image.new("L", (4, 4)), alpha=alpha)


# -- more of tests/test_methods_gradient.py and tests/test_methods_activation.py -------------


def test_gradcam_reports_disconnected_output_target():
    """test_methods_gradient.py::test_gradcam_reports_disconnected_output_target (a target
    detached from the graph: a RuntimeError, camkit's GradientError)."""
    model = _tiny_model()
    with shim.GradCAM(model, "2") as extractor:
        scores = model(torch.rand(1, 3, 4, 4))
        with pytest.raises(RuntimeError):
            extractor(scores=scores, targets=lambda row: row[0].detach())


@needs_contrib
def test_finercam_automatic_references_use_closest_scores():
    """test_methods_gradient.py::test_finercam_automatic_references_cap_and_use_closest_scores
    (the original spies on a private method; here the map equals the base extractor's on the
    contrastive score with the two closest classes, ``num_references=10`` capped to 2)."""
    model = _tiny_model(3)
    manual = deepcopy(model)
    x = torch.rand((2, 3, 8, 8), generator=torch.Generator().manual_seed(2))
    class_idx = [1, 2]
    with shim.FinerCAM(model, "2", num_references=10) as extractor:
        cams = extractor(class_idx, model(x), normalized=False)
    with shim.GradCAM(manual, "2") as base_cam:
        scores = manual(x)
        chosen = torch.tensor(class_idx).view(-1, 1)
        distances = (scores.detach() - scores.detach().gather(1, chosen)).abs()
        distances.scatter_(1, chosen, float("inf"))
        references = distances.topk(2, dim=1, largest=False).indices
        contrastive = scores.gather(1, chosen) - 0.6 * scores.gather(1, references).mean(
            1, keepdim=True
        )
        expected = base_cam([0, 0], contrastive, normalized=False)
    torch.testing.assert_close(cams[0], expected[0])


@pytest.mark.parametrize("name", ["ScoreCAM", "SSCAM", "ISCAM"])
def test_scorecam_restores_state_on_error(name):
    """test_methods_activation.py::test_scorecam_restores_state_on_error (the masked
    forward fails: the original patches a private method, here the model raises from its
    second call on)."""

    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, _ = _scorecam_inputs()
            self.calls = 0

        def forward(self, x: Tensor) -> Tensor:
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("boom")
            return self.net(x)

    model = Failing()
    model.train()
    _, x = _scorecam_inputs()
    with getattr(shim, name)(model, ["net.1", "net.3"], **_scorecam_kwargs(name, 3)) as ext:
        ext.enable_hooks()
        scores = model(x)
        with pytest.raises(RuntimeError, match="boom"):
            ext(1, scores)
        assert ext._hooks_enabled
        assert model.training


# -- tests/test_methods_transformer.py: LeGrad ----------------------------------------------


class _TinyBlock(nn.Module):
    def __init__(
        self, hidden_dim: int = 8, num_heads: int = 2, *, batch_first: bool = True, **options
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, batch_first=batch_first, **options
        )
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim * 2), nn.GELU(), nn.Linear(hidden_dim * 2, hidden_dim)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.ln_1(tokens)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = x + tokens
        return x + self.mlp(self.ln_2(x))


class _PositionalAttentionBlock(_TinyBlock):
    def forward(self, tokens: Tensor) -> Tensor:
        x = self.ln_1(tokens)
        x, _ = self.self_attention(x, x, x, None, False, None, True)
        x = x + tokens
        return x + self.mlp(self.ln_2(x))


class _TinyViT(nn.Module):
    """Patch embedding, prefix tokens, attention blocks, a mean-pooled head."""

    def __init__(
        self, grid_shape=(2, 2), prefix_tokens: int = 1, num_layers: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 1)
        self.prefix = nn.Parameter(torch.randn(1, prefix_tokens, 8))
        self.blocks = nn.ModuleList([_TinyBlock(dropout=dropout) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def project(self, tokens: Tensor) -> Tensor:
        return self.head(self.norm(tokens.mean(dim=1)))

    def embed(self, x: Tensor) -> Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return torch.cat((self.prefix.expand(tokens.shape[0], -1, -1), tokens), dim=1)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.project(tokens)


def _legrad_reference(model: _TinyViT, x: Tensor, class_idx, layers, prefix: int, grid):
    """LeGrad written out: each block's attention probabilities recomputed by hand, the
    projected score of that block's tokens differentiated with respect to them, ReLU, mean
    over heads and queries, the patch tokens on the grid, averaged over blocks, min-max."""
    import torch.nn.functional as F

    tokens, attentions, layer_scores = model.embed(x), [], []
    for block in model.blocks:
        att = block.self_attention
        q, k, v = F.linear(block.ln_1(tokens), att.in_proj_weight, att.in_proj_bias).chunk(3, -1)
        b, t, d = q.shape
        heads, hd = att.num_heads, d // att.num_heads
        q, k, v = (z.reshape(b, t, heads, hd).transpose(1, 2) for z in (q, k, v))
        probs = torch.softmax(q @ k.transpose(-2, -1) / hd**0.5, dim=-1)
        out = att.out_proj((probs @ v).transpose(1, 2).reshape(b, t, d))
        h = tokens + out
        tokens = h + block.mlp(block.ln_2(h))
        attentions.append(probs)
        layer_scores.append(model.project(tokens))
    maps = []
    for i, layer in enumerate(layers):
        s = layer_scores[layer]
        chosen = s[:, class_idx] if isinstance(class_idx, int) else s.gather(
            1, torch.tensor(class_idx).view(-1, 1)
        )[:, 0]  # fmt: skip
        (g,) = torch.autograd.grad(
            chosen.sum(), attentions[layer], retain_graph=i < len(layers) - 1
        )
        relevance = g.relu().mean(dim=(1, 2))[:, prefix:]
        maps.append(relevance.reshape(relevance.shape[0], *grid))
    cam = torch.stack(maps).mean(0)
    cam = cam - cam.flatten(1).min(-1).values[:, None, None]
    return model.project(tokens), cam / (cam.flatten(1).max(-1).values[:, None, None] + 1e-8)


@pytest.mark.parametrize(
    ("grid", "prefix", "layers", "batch", "class_idx", "infer_grid"),
    [((2, 2), 1, [0], 1, 1, True), ((2, 3), 2, [0, 1], 2, [0, 2], False)],
)
def test_legrad_matches_manual_oracle(grid, prefix, layers, batch, class_idx, infer_grid):
    """test_methods_transformer.py::test_legrad_matches_manual_oracle (the map and scores)."""
    torch.manual_seed(0)
    model = _TinyViT(grid, prefix)
    oracle = deepcopy(model)
    x = torch.randn(batch, 3, *grid)
    expected_scores, expected = _legrad_reference(oracle, x, class_idx, layers, prefix, grid)
    extractor = until_landed(
        shim.LeGrad, model, [model.blocks[i] for i in layers], score_projection=model.project,
        prefix_tokens=prefix, grid_shape=None if infer_grid else grid,
    )  # fmt: skip
    with extractor:
        scores = model(x)
        cam = extractor(class_idx, torch.full_like(scores, 1e6), retain_graph=True)[0]
        assert torch.allclose(scores, expected_scores, atol=1e-6, rtol=1e-5)
        assert torch.allclose(cam, expected, atol=1e-6, rtol=1e-5)


def test_legrad_torchvision_vit_repeated_calls_and_frozen_parameters():
    """test_methods_transformer.py::test_legrad_torchvision_vit_repeated_calls_and_frozen_
    parameters (dtype: camkit's maps are float32, see the dtype difference)."""
    model = _build_vit().double()
    for p in model.parameters():
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with until_landed(shim.LeGrad, model, list(model.encoder.layers)) as extractor:
        for _ in range(2):
            cam = extractor([0, 1], model(x))[0]
            assert cam.shape == (2, 4, 4)
            assert cam.device == x.device
            assert torch.isfinite(cam).all()
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_legrad_classification_metric_compatibility():
    """test_methods_transformer.py::test_legrad_classification_metric_compatibility."""
    model = _build_vit()
    with until_landed(shim.LeGrad, model, model.encoder.layers[-1]) as extractor:
        metric = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        metric.update(torch.randn(1, 3, 32, 32))
        assert set(metric.summary()) == {"avg_drop", "conf_increase"}


@pytest.mark.parametrize("raise_inside", [False, True])
def test_legrad_restores_model_and_hooks(raise_inside):
    """test_methods_transformer.py::test_legrad_restores_model_and_hooks."""
    from contextlib import nullcontext

    torch.manual_seed(0)
    model = _TinyViT().train()
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(i % 2 == 0)
    attention = model.blocks[0].self_attention
    forward = attention.forward.__func__
    training = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    hooks = (len(attention._forward_pre_hooks), len(attention._forward_hooks))
    extractor = until_landed(shim.LeGrad, model, model.blocks[0], score_projection=model.project)
    expectation = pytest.raises(RuntimeError, match="boom") if raise_inside else nullcontext()
    with expectation, extractor:
        assert attention.forward.__func__ is forward
        if raise_inside:
            raise RuntimeError("boom")
        scores = model(torch.randn(1, 3, 2, 2))
        assert torch.isfinite(extractor(0, scores)[0]).all()
    assert attention.forward.__func__ is forward
    assert (len(attention._forward_pre_hooks), len(attention._forward_hooks)) == hooks
    assert training == [m.training for m in model.modules()]
    assert flags == [p.requires_grad for p in model.parameters()]


def test_legrad_supports_positional_attention_options():
    """test_methods_transformer.py::test_legrad_supports_positional_attention_options."""
    torch.manual_seed(0)
    model = _TinyViT()
    model.blocks[0] = _PositionalAttentionBlock()
    with until_landed(shim.LeGrad, model, model.blocks[0], score_projection=model.project) as ext:
        scores = model(torch.randn(1, 3, 2, 2))
        assert torch.isfinite(ext(0, scores)[0]).all()


@needs_torchcam
def test_the_legrad_reference_is_torchcams():
    """The reference above agrees with torchcam's own LeGrad, so the skipped LeGrad tests
    compare the shim with the right formula once camkit has it."""
    from torchcam.methods import LeGrad

    torch.manual_seed(0)
    model = _TinyViT((2, 3), 2)
    x = torch.randn(2, 3, 2, 3)
    _, expected = _legrad_reference(deepcopy(model), x, [0, 2], [0, 1], 2, (2, 3))
    blocks = list(model.blocks)
    with LeGrad(
        model, blocks, score_projection=model.project, prefix_tokens=2, grid_shape=(2, 3)
    ) as ext:
        cam = ext([0, 2], model(x))[0]
    torch.testing.assert_close(cam, expected, atol=1e-6, rtol=1e-5)


# -- tests/test_methods_transformer.py: LeGrad's checks -------------------------------------
# torchcam patches each target block's attention during the user's forward; the shim leaves
# the model alone until it is called and reads the attention in camkit's own forward (the
# engine's attention pass). Its checks are camkit's: at construction for the blocks, when
# called for the rest. Where the shim explains an input torchcam rejects, the port checks
# the map against the reference above.


class _CrossAttentionBlock(_TinyBlock):
    def forward(self, tokens: Tensor) -> Tensor:
        x = self.ln_1(tokens)
        memory = x.roll(1, dims=1)
        x, _ = self.self_attention(x, memory, memory, need_weights=False)
        x = x + tokens
        return x + self.mlp(self.ln_2(x))


class _InvalidOutputBlock(_TinyBlock):
    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens).mean(dim=1)


class _DropTokenBlock(_TinyBlock):
    def forward(self, tokens: Tensor) -> Tensor:
        return super().forward(tokens)[:, :-1]


class _NoWeightsAttention(nn.MultiheadAttention):
    def forward(self, *args, **kwargs):
        output, _ = super().forward(*args, **kwargs)
        return output, None


class _AveragedWeightsAttention(nn.MultiheadAttention):
    def forward(self, *args, **kwargs):
        output, weights = super().forward(*args, **kwargs)
        assert isinstance(weights, Tensor)
        return output, weights.mean(dim=1)


class _ShortWeightsAttention(nn.MultiheadAttention):
    def forward(self, *args, **kwargs):
        output, weights = super().forward(*args, **kwargs)
        assert isinstance(weights, Tensor)
        return output, weights[..., :-1]


class _RecordingBlock(_TinyBlock):
    """Calls its attention with ``options`` and records the weights it gets back."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.options, self.returned = options, []

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.ln_1(tokens)
        x, weights = self.self_attention(x, x, x, **self.options)
        self.returned.append(weights)
        x = x + tokens
        return x + self.mlp(self.ln_2(x))


def _separate_projection_block() -> nn.Module:
    block = _TinyBlock()
    block.self_attention = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
    return block


def _hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()]


def _raised(call) -> type[BaseException]:
    try:
        call()
    except Exception as exc:
        return type(exc)
    raise AssertionError("the call did not raise")


@pytest.mark.parametrize(
    ("target_factory", "exception", "error"),
    [
        (nn.Identity, TypeError, "no attention block"),
        (partial(_TinyBlock, batch_first=False), ValueError, "batch-first"),
        (_separate_projection_block, ValueError, "one input projection"),
        (partial(_TinyBlock, add_bias_kv=True), ValueError, "added keys"),
        (partial(_TinyBlock, add_zero_attn=True), ValueError, "added keys"),
    ],
)
def test_legrad_rejects_unsupported_target_blocks(target_factory, exception, error):
    """test_methods_transformer.py::test_legrad_rejects_unsupported_target_blocks (camkit's
    messages; no hook is left on the model)."""
    from camkit.errors import LayerError

    model = _TinyViT()
    model.blocks[0] = target_factory()
    hooks = _hook_counts(model)
    with pytest.raises(exception, match=error) as raised:
        shim.LeGrad(model, model.blocks[0], score_projection=model.project)
    assert isinstance(raised.value, LayerError)
    assert _hook_counts(model) == hooks


def test_legrad_rejects_invalid_configuration():
    """test_methods_transformer.py::test_legrad_rejects_invalid_configuration (camkit's
    messages)."""
    model = _TinyViT(grid_shape=(2, 3))
    block, project = model.blocks[0], model.project
    with pytest.raises(ValueError, match="score_projection"):
        shim.LeGrad(model, block)
    with pytest.raises(ValueError, match="explicit target"):
        shim.LeGrad(model, [], score_projection=project)
    with pytest.raises(TypeError, match="integer"):
        shim.LeGrad(model, block, score_projection=project, prefix_tokens=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        shim.LeGrad(model, block, score_projection=project, prefix_tokens=-1)
    with pytest.raises(TypeError, match="tuple of two integers"):
        shim.LeGrad(model, block, score_projection=project, grid_shape=[2, 3])
    with pytest.raises(ValueError, match="positive"):
        shim.LeGrad(model, block, score_projection=project, grid_shape=(2, 0))
    with pytest.raises(TypeError, match="callable"):
        shim.LeGrad(model, block, score_projection=object())
    x = torch.randn(1, 3, 2, 3)
    for options, error in (
        ({}, "square patch grid"),
        ({"grid_shape": (2, 2)}, "does not match"),
        ({"prefix_tokens": 7}, "at least one patch"),
    ):
        with shim.LeGrad(model, block, score_projection=project, **options) as extractor:
            scores = model(x)
            with pytest.raises(ValueError, match=error):
                extractor(0, scores)


def test_legrad_rejects_invalid_attention_inputs():
    """test_methods_transformer.py::test_legrad_rejects_invalid_attention_inputs (torchcam's
    patched attention rejects a missing key and unbatched tokens; the shim does not touch the
    attention module, so a direct call behaves as torch's: the same error for the missing key,
    the same output for unbatched tokens)."""
    model = _TinyViT()
    attention = model.blocks[0].self_attention
    query = torch.randn(1, 5, 8)
    unbatched = query.squeeze(0)
    error = _raised(lambda: attention(query, None, query))
    expected = attention(unbatched, unbatched, unbatched)[0]
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project):
        with pytest.raises(error):
            attention(query, None, query)
        torch.testing.assert_close(attention(unbatched, unbatched, unbatched)[0], expected)


@needs_contrib
def test_legrad_rejects_disconnected_scores_and_invalid_forward_modes():
    """test_methods_transformer.py::test_legrad_rejects_disconnected_scores_and_invalid_
    forward_modes. The shim explains the two forwards torchcam rejects: a model in training
    mode with attention dropout (the map is the eval-mode one, as for every shim call) and a
    forward under ``inference_mode`` (camkit runs the recorded input again); both maps equal
    the reference. A score disconnected from the attention is a ``GradientError``
    (``RuntimeError``), a ``score_projection`` that returns no ``(N, classes)`` scores a
    ``ConfigError`` (``ValueError``), when the extractor is called."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 2)
    model = _TinyViT(dropout=0.1).train()
    _, expected = _legrad_reference(deepcopy(model).eval(), x, 0, [0], 1, (2, 2))
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
        scores = model(x)
        torch.testing.assert_close(extractor(0, scores)[0], expected, atol=1e-6, rtol=1e-5)
    assert all(m.training for m in model.modules())

    model = _TinyViT()
    _, expected = _legrad_reference(deepcopy(model), x, 0, [0], 1, (2, 2))
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
        with torch.inference_mode():
            scores = model(x)
        torch.testing.assert_close(extractor(0, scores)[0], expected, atol=1e-6, rtol=1e-5)

    def disconnected(tokens: Tensor) -> Tensor:
        return model.project(tokens.detach())

    with shim.LeGrad(model, model.blocks[0], score_projection=disconnected) as extractor:
        scores = model(x)
        with pytest.raises(RuntimeError, match="gradient"):
            extractor(0, scores)
    with shim.LeGrad(
        model, model.blocks[0], score_projection=lambda tokens: tokens.mean()
    ) as extractor:
        scores = model(x)
        with pytest.raises(ValueError, match=r"\(B, classes\) scores"):
            extractor(0, scores)


@needs_contrib
def test_legrad_rejects_cross_attention():
    """test_methods_transformer.py::test_legrad_rejects_cross_attention (when the extractor
    is called: camkit reads the attention in its own forward)."""
    model = _TinyViT()
    model.blocks[0] = _CrossAttentionBlock()
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
        scores = model(torch.randn(1, 3, 2, 2))
        with pytest.raises(ValueError, match="self-attention"):
            extractor(0, scores)


@needs_contrib
@pytest.mark.parametrize(
    "attention_type", [_NoWeightsAttention, _AveragedWeightsAttention, _ShortWeightsAttention]
)
def test_legrad_rejects_incompatible_attention_outputs(attention_type):
    """test_methods_transformer.py::test_legrad_rejects_incompatible_attention_outputs.
    camkit computes the attention probabilities from the module's inputs and never reads the
    weights it returns, so the shim explains these modules: the map equals the reference.
    The shim does not change the caller's ``need_weights=False`` (torchcam forces ``True``),
    so the two modules that assert on their weights fail in the model's own forward, as they
    do without an extractor; with a block that asks for the weights, the map is checked."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 2, 2)
    model = _TinyViT()
    model.blocks[0].self_attention = attention_type(8, 2, batch_first=True)
    if attention_type is not _NoWeightsAttention:
        error = _raised(lambda: model(x))
        with (
            shim.LeGrad(model, model.blocks[0], score_projection=model.project),
            pytest.raises(error),
        ):
            model(x)
        model.blocks[0] = _RecordingBlock(need_weights=True)
        model.blocks[0].self_attention = attention_type(8, 2, batch_first=True)
    _, expected = _legrad_reference(deepcopy(model), x, 0, [0], 1, (2, 2))
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
        scores = model(x)
        torch.testing.assert_close(extractor(0, scores)[0], expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("block_type", "during_forward"), [(_InvalidOutputBlock, True), (_DropTokenBlock, False)]
)
def test_legrad_rejects_incompatible_block_outputs(block_type, during_forward):
    """test_methods_transformer.py::test_legrad_rejects_incompatible_block_outputs (camkit's
    messages: a block that drops a token leaves no square grid; with the grid given, camkit's
    own check of the attention keys against the block's tokens)."""
    model = _TinyViT()
    model.blocks[0] = block_type()
    x = torch.randn(1, 3, 2, 2)
    with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
        if during_forward:
            with pytest.raises(ValueError, match="must return tokens"):
                model(x)
        else:
            scores = model(x)
            with pytest.raises(ValueError, match="square patch grid"):
                extractor(0, scores)
    if not during_forward and HAS_CONTRIB:
        with shim.LeGrad(
            model, model.blocks[0], score_projection=model.project, grid_shape=(1, 3)
        ) as extractor:
            scores = model(x)
            with pytest.raises(ValueError, match="its attention has 4 keys"):
                extractor(0, scores)


def test_legrad_rejects_missing_captured_state():
    """test_methods_transformer.py::test_legrad_rejects_missing_captured_state (the shim
    keeps no ``hook_attn``: camkit reads the attention when called; the recorded block
    tokens cleared, both ``__call__`` and ``compute_cams`` raise ``NotForwardedError``, an
    ``AssertionError``)."""
    model = _TinyViT()
    x = torch.randn(1, 3, 2, 2)
    for call in ("__call__", "compute_cams"):
        with shim.LeGrad(model, model.blocks[0], score_projection=model.project) as extractor:
            scores = model(x)
            extractor.hook_a[0] = None
            with pytest.raises(AssertionError, match="forward inputs through the model"):
                getattr(extractor, call)(0, scores)


@needs_contrib
@pytest.mark.parametrize(
    ("options", "shape"),
    [({}, (1, 5, 5)), ({"need_weights": False}, None), ({"average_attn_weights": False},
     (1, 2, 5, 5))],
)  # fmt: skip
def test_legrad_rejects_missing_attention_return_options(options, shape):
    """test_methods_transformer.py::test_legrad_rejects_missing_attention_return_options
    (torchcam's private record of the caller's ``need_weights`` and
    ``average_attn_weights``; the public part: the attention returns what its caller asked
    for, in the user's forward and in camkit's, with the same values)."""
    torch.manual_seed(0)
    model = _TinyViT()
    model.blocks[0] = block = _RecordingBlock(**options)
    with shim.LeGrad(model, block, score_projection=model.project) as extractor:
        scores = model(torch.randn(1, 3, 2, 2))
        assert torch.isfinite(extractor(0, scores)[0]).all()
    user, *camkit_passes = block.returned
    assert camkit_passes
    assert (None if user is None else tuple(user.shape)) == shape
    for returned in camkit_passes:
        if shape is None:
            assert returned is None
        else:
            torch.testing.assert_close(returned.detach(), user.detach())


def test_legrad_remove_hooks_restores_attention():
    """test_methods_transformer.py::test_legrad_remove_hooks_restores_attention (and every
    other module's hooks)."""
    model = _TinyViT()
    attention = model.blocks[0].self_attention
    hooks = (len(attention._forward_pre_hooks), len(attention._forward_hooks))
    every = _hook_counts(model)
    extractor = shim.LeGrad(model, model.blocks[0], score_projection=model.project)
    extractor.remove_hooks()
    assert (len(attention._forward_pre_hooks), len(attention._forward_hooks)) == hooks
    assert _hook_counts(model) == every
    assert extractor.hook_handles == []


def test_metrics_reject_unsupported_spatial_rank():
    """test_metrics.py::test_metrics_reject_unsupported_spatial_rank."""
    extractor = _FixedExtractor(_SumClassifier(), _exact_input().squeeze(1))
    with pytest.raises(ValueError, match="1D"):
        ClassificationMetric(extractor).update(torch.ones((1, 1)), class_idx=0)


@pytest.mark.parametrize("metric_cls", [ClassificationMetric, DeletionInsertionMetric])
def test_metrics_skip_nan_cams(metric_cls):
    """test_metrics.py::test_metrics_skip_nan_cams."""
    cam = torch.stack((_exact_input()[0, 0], torch.full((2, 2), float("nan"))))
    extractor = _FixedExtractor(_SumClassifier(), cam)
    x = _exact_input().expand(2, -1, -1, -1).clone()
    if metric_cls is ClassificationMetric:
        metric = metric_cls(extractor)
    else:
        metric = metric_cls(extractor, steps=2, baseline=torch.zeros_like(x))
    metric.update(x, class_idx=[0, 0])
    assert metric.total == 1
    assert metric.nan_count == 1


@pytest.mark.parametrize("metric_cls", [ClassificationMetric, DeletionInsertionMetric])
def test_metrics_all_nan_cams(metric_cls):
    """test_metrics.py::test_metrics_all_nan_cams."""
    extractor = _FixedExtractor(_SumClassifier(), torch.full((1, 2, 2), float("nan")))
    kwargs = {} if metric_cls is ClassificationMetric else {"steps": 2}
    metric = metric_cls(extractor, **kwargs)
    metric.update(_exact_input())
    assert metric.nan_count == 1
    with pytest.raises(AssertionError, match="update"):
        metric.summary()


def test_smoothgradcampp_restores_hooks_on_error():
    """test_methods_gradient.py::test_smoothgradcampp_restores_input_hook_on_error (a
    noisy forward fails: the original patches a private method, here the model raises from
    its second call on; the hooks stay enabled and the next call works)."""

    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.fail = _tiny_model(), False

        def forward(self, x: Tensor) -> Tensor:
            if self.fail:
                raise RuntimeError("boom")
            return self.net(x)

    model = Failing()
    with shim.SmoothGradCAMpp(model, "net.2", num_samples=1) as extractor:
        scores = model(torch.rand(1, 3, 8, 8))
        model.fail = True
        with pytest.raises(RuntimeError, match="boom"):
            extractor(int(scores[0].argmax()), scores)
        assert extractor._hooks_enabled
        model.fail = False
        scores = model(torch.rand(1, 3, 8, 8))
        _verify_cam(extractor(int(scores[0].argmax()), scores)[0], (1, 8, 8))
