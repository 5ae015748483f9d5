"""The smoothing run options ``aug_smooth`` and ``eigen_smooth``: against slow re-implementations
written here, and against pytorch-grad-cam 1.5.7 (the oracle) on ResNet-18."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import ConfigError
from camkit.method import Context, Method

AUGMENTATIONS = [(False, 0.9), (False, 1.0), (False, 1.1), (True, 0.9), (True, 1.0), (True, 1.1)]


def pearson(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])


def grad_cam():
    pytest.importorskip("pytorch_grad_cam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return pytorch_grad_cam, ClassifierOutputTarget


# -- aug_smooth ------------------------------------------------------------------------------


def slow_aug_smooth(method: str, model: nn.Module, layer: str, x: Tensor, classes: list[int]):
    """Six separate extractor calls on hand-made copies, each map flipped back, averaged."""
    cam = camkit.create(method, model, layer)
    total = torch.zeros(x.shape[0], *x.shape[2:])
    for flip, factor in AUGMENTATIONS:
        copy = torch.flip(x, dims=[3]) * factor if flip else x * factor
        maps = cam(copy, classes).maps
        total += torch.flip(maps, dims=[2]) if flip else maps
    return total / 6


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "cam", "layercam"])
def test_aug_smooth_is_the_mean_of_six_augmented_maps(tiny, x32, method):
    expected = slow_aug_smooth(method, tiny, "features", x32, [1, 3])
    res = camkit.create(method, tiny, "features", aug_smooth=True)(x32, [1, 3])
    torch.testing.assert_close(res.maps, expected, atol=1e-6, rtol=0)
    assert res.targets.tolist() == [1, 3] and res.maps.shape == (2, 32, 32)


def test_aug_smooth_explains_the_plain_inputs_predicted_class_in_every_copy(tiny, x32):
    predicted = tiny(x32).argmax(1).tolist()
    res = camkit.create("gradcam", tiny, "features", aug_smooth=True)(x32)
    assert res.targets.tolist() == predicted
    expected = slow_aug_smooth("gradcam", tiny, "features", x32, predicted)
    torch.testing.assert_close(res.maps, expected, atol=1e-6, rtol=0)


def test_aug_smooth_averages_layer_maps_and_weights_mapped_back(tiny, x32):
    cam = camkit.create("layercam", tiny, "features")
    runs = [
        (flip, cam(torch.flip(x32, [3]) * f if flip else x32 * f, [0, 2]))
        for flip, f in AUGMENTATIONS
    ]
    res = camkit.create("layercam", tiny, "features", aug_smooth=True)(x32, [0, 2])
    layer = torch.stack(
        [r.layer_maps["features"].flip(2) if fl else r.layer_maps["features"] for fl, r in runs]
    )
    weights = torch.stack(
        [r.weights["features"].flip(3) if fl else r.weights["features"] for fl, r in runs]
    )
    torch.testing.assert_close(res.layer_maps["features"], layer.mean(0))
    torch.testing.assert_close(res.weights["features"], weights.mean(0))


def test_aug_smooth_matches_grad_cam_on_resnet18(resnet18, x64):
    lib, Target = grad_cam()
    for method, original in [("gradcam", lib.GradCAM), ("layercam", lib.LayerCAM)]:
        theirs = original(resnet18, [resnet18.layer3[-1]])(
            x64, [Target(3), Target(7)], aug_smooth=True
        )
        ours = camkit.create(method, resnet18, "layer3", aug_smooth=True)(x64, [3, 7]).maps
        for a, b in zip(ours, theirs):
            assert pearson(a, b) >= 0.999, method


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_aug_smooth_matches_grad_cam_with_score_methods(tiny, x32, method):
    """At full resolution (``features.0``): at a coarser layer camkit min-max normalizes a map
    before upsampling it and pytorch-grad-cam after, so each copy's map differs from the
    original's by its own affine map and their mean agrees only to r ~ 0.998 (a difference
    of the base maps, not of the smoothing)."""
    lib, Target = grad_cam()
    original = {"scorecam": lib.ScoreCAM, "ablationcam": lib.AblationCAM}[method]
    theirs = original(tiny, [tiny.features[0]])(x32, [Target(1), Target(4)], aug_smooth=True)
    ours = camkit.create(method, tiny, "features.0", aug_smooth=True)(x32, [1, 4]).maps
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5, rtol=0)


# -- eigen_smooth ----------------------------------------------------------------------------


def captured(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    out: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: out.append(o.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[0]


def slow_eigen(weights: Tensor, acts: Tensor) -> Tensor:
    """Per image, with NumPy in float64: ``w_k A_k`` as (locations, C) rows, centred, projected
    on the first right-singular vector whose entries sum to >= 0; then the ReLU."""
    out = []
    for w, a in zip(weights.double().numpy(), acts.double().numpy()):
        weighted = a * (w[:, None, None] if w.ndim == 1 else w)
        rows = weighted.reshape(weighted.shape[0], -1).T
        rows = rows - rows.mean(axis=0)
        v = np.linalg.svd(rows)[2][0]
        v = -v if v.sum() < 0 else v
        out.append(np.maximum(rows @ v, 0).reshape(a.shape[1:]))
    return torch.tensor(np.array(out), dtype=torch.float32)


@pytest.mark.parametrize("method", ["gradcam", "layercam", "scorecam", "cam"])
def test_eigen_smooth_is_the_weighted_activations_first_principal_component(tiny, x32, method):
    plain = camkit.create(method, tiny, "features")(x32, [2, 0])
    res = camkit.create(method, tiny, "features", eigen_smooth=True)(x32, [2, 0])
    expected = slow_eigen(plain.weights["features"], captured(tiny, "features", x32))
    torch.testing.assert_close(res.layer_maps["features"], expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(res.weights["features"], plain.weights["features"])
    assert not torch.allclose(res.layer_maps["features"], plain.layer_maps["features"], atol=1e-3)


def test_eigen_smooth_matches_grad_cam_up_to_the_svd_sign(resnet18, monkeypatch):
    """pytorch-grad-cam keeps whichever sign its SVD returns; camkit the one that agrees with
    the unsmoothed map. Each image matches the original or the original with the other sign."""
    lib, Target = grad_cam()
    x = torch.randn(3, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    targets = [Target(c) for c in (3, 7, 1)]
    ours = camkit.create("gradcam", resnet18, "layer3", eigen_smooth=True)(x, [3, 7, 1]).maps
    theirs = lib.GradCAM(resnet18, [resnet18.layer3[-1]])(x, targets, eigen_smooth=True)
    base_cam = __import__("pytorch_grad_cam.base_cam", fromlist=["get_2d_projection"])
    original = base_cam.get_2d_projection
    monkeypatch.setattr(base_cam, "get_2d_projection", lambda a: -original(a))
    flipped = lib.GradCAM(resnet18, [resnet18.layer3[-1]])(x, targets, eigen_smooth=True)
    for a, b, c in zip(ours, theirs, flipped):
        assert max(pearson(a, b), pearson(a, c)) >= 0.999


def test_eigen_smooth_with_a_score_method_matches_grad_cam_up_to_the_svd_sign(tiny, monkeypatch):
    lib, Target = grad_cam()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    targets = [Target(c) for c in (0, 2, 4)]
    ours = camkit.create("scorecam", tiny, "features.0", eigen_smooth=True)(x, [0, 2, 4]).maps
    theirs = lib.ScoreCAM(tiny, [tiny.features[0]])(x, targets, eigen_smooth=True)
    base_cam = __import__("pytorch_grad_cam.base_cam", fromlist=["get_2d_projection"])
    original = base_cam.get_2d_projection
    monkeypatch.setattr(base_cam, "get_2d_projection", lambda a: -original(a))
    flipped = lib.ScoreCAM(tiny, [tiny.features[0]])(x, targets, eigen_smooth=True)
    for a, b, c in zip(ours, theirs, flipped):
        assert max(pearson(a, b), pearson(a, c)) >= 0.999


def test_eigen_smooth_projection_matches_grad_cams_up_to_sign(resnet18, x64):
    grad_cam()
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    from camkit.engine.smoothing import principal_projection

    weighted = captured(resnet18, "layer3", x64) * torch.rand(
        2, 256, 1, 1, generator=torch.Generator().manual_seed(0)
    )
    ours = principal_projection(weighted)
    theirs = get_2d_projection(weighted.numpy())
    for a, b, w in zip(ours, theirs, weighted):
        assert abs(pearson(a, b)) >= 0.999
        assert pearson(a, w.sum(0)) > 0  # camkit's sign agrees with the unsmoothed map


def test_eigen_smooth_needs_a_method_with_weights(tiny):
    class DirectMap(Method):
        name = "direct"

        def map(self, ctx: Context) -> Tensor:
            return ctx.activations.mean(1)

    with pytest.raises(ConfigError, match="eigen_smooth needs a method that weights"):
        camkit.Extractor(
            DirectMap(), tiny, "features", options=camkit.RunOptions(eigen_smooth=True)
        )
    camkit.Extractor(DirectMap(), tiny, "features")  # fine without it


# -- both, and errors --------------------------------------------------------------------------


def test_both_options_together_match_grad_cam(resnet18, x64):
    lib, Target = grad_cam()
    ours = camkit.create("gradcam", resnet18, "layer4", aug_smooth=True, eigen_smooth=True)(
        x64, [5, 9]
    )
    theirs = lib.GradCAM(resnet18, [resnet18.layer4[-1]])(
        x64, [Target(5), Target(9)], aug_smooth=True, eigen_smooth=True
    )
    assert ours.maps.shape == (2, 64, 64) and float(ours.maps.min()) >= 0
    # layer4 is 2x2 here: the SVD signs of the original's six copies may each differ, so the
    # check is the run option's own consistency: the mean of six eigen-smoothed maps.
    cam = camkit.create("gradcam", resnet18, "layer4", eigen_smooth=True)
    maps = [
        cam(torch.flip(x64, [3]) * f if fl else x64 * f, [5, 9]).maps for fl, f in AUGMENTATIONS
    ]
    maps = [m.flip(2) if fl else m for m, (fl, _) in zip(maps, AUGMENTATIONS)]
    torch.testing.assert_close(ours.maps, torch.stack(maps).mean(0), atol=1e-6, rtol=0)
    assert theirs.shape == (2, 64, 64)


@pytest.mark.parametrize(
    "options",
    [{"aug_smooth": "yes"}, {"aug_smooth": 1}, {"eigen_smooth": None}, {"eigen_smooth": "true"}],
)
def test_invalid_smoothing_options_are_config_errors(tiny, options):
    key = next(iter(options))
    with pytest.raises(ConfigError, match=key):
        camkit.create("gradcam", tiny, "features", **options)


def test_smoothing_leaves_the_model_as_it_was(tiny, x32, no_hooks):
    model = tiny.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    camkit.create("gradcam", model, "features", aug_smooth=True, eigen_smooth=True)(x32, [1, 2])
    assert model.training
    no_hooks(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "options", [{"aug_smooth": True}, {"eigen_smooth": True}, {"sess": {"num_scales": 2}}]
)
def test_smoothing_options_on_cuda_match_the_cpu(tiny, x32, options):
    import copy

    gpu = copy.deepcopy(tiny).cuda()
    on_cpu = camkit.create("gradcam", tiny, "features", **options)(x32, [1, 2]).maps
    on_gpu = camkit.create("gradcam", gpu, "features", **options)(x32.cuda(), [1, 2]).maps
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=5e-3, rtol=0)  # TF32 convolutions
