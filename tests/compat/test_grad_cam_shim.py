"""camkit.compat.pytorch_grad_cam against pytorch-grad-cam 1.5.7 (the oracle) and the formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_contrib, needs_grad_cam, small_cnn, tiny_vit
from torch import Tensor, nn

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat._shared import not_landed
from camkit.compat.pytorch_grad_cam.utils import image as shim_image
from camkit.compat.pytorch_grad_cam.utils import model_targets as shim_targets
from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform
from camkit.errors import MethodNotFoundError

ATOL = 1e-5
GRADIENT = ["GradCAM", "XGradCAM", "LayerCAM"]
CONTRIB = ["HiResCAM", "GradCAMElementWise"]


def peer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam

    return pytorch_grad_cam


def run(lib, name: str, model: nn.Module, layers, x: Tensor, classes, **call) -> np.ndarray:
    targets_mod = (
        shim_targets if lib is shim else lib.utils.model_targets  # each library's own targets
    )
    targets = None if classes is None else [targets_mod.ClassifierOutputTarget(c) for c in classes]
    kw = call.pop("init", {})
    with getattr(lib, name)(model, layers, **kw) as cam:
        return cam(x, targets, **call)


def compare(name, model, layers, x, classes, ours_init=None, atol=ATOL, **call):
    theirs = run(peer(), name, model, layers, x, classes, **call)
    ours = run(shim, name, model, layers, x, classes, init=ours_init or {}, **call)
    assert ours.dtype == theirs.dtype == np.float32
    assert ours.shape == theirs.shape == (x.shape[0], *x.shape[2:])
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)
    return ours


@needs_grad_cam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", [*GRADIENT, "GradCAMPlusPlus"])
def test_matches_grad_cam_on_a_small_cnn(name, batch):
    model = small_cnn()
    init = {"legacy_numerics": True} if name == "GradCAMPlusPlus" else {}
    compare(name, model, [model[0][3]], images(batch), [i % 5 for i in range(batch)], init)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("name", CONTRIB)
def test_matches_grad_cam_on_contrib_methods(name):
    model = small_cnn()
    compare(name, model, [model[0][1], model[0][3]], images(2), [1, 2])


@needs_grad_cam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", GRADIENT)
def test_matches_grad_cam_on_resnet18(resnet, name, batch):
    compare(name, resnet, [resnet.layer3[-1], resnet.layer4[-1]], images(batch), None)


@needs_grad_cam
@pytest.mark.parametrize("smooth", ["eigen_smooth", "aug_smooth"])
@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM"])
def test_smoothing_matches_grad_cam(name, smooth):
    model = small_cnn()
    # eigen_smooth: legacy_numerics keeps the sign NumPy's SVD picks (the default's is below)
    init = {"legacy_numerics": True} if smooth == "eigen_smooth" else {}
    compare(name, model, [model[0][3]], images(2), [0, 3], init, atol=1e-4, **{smooth: True})


@needs_grad_cam
@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM"])
def test_eigen_smooth_matches_grad_cam_up_to_the_svd_sign(name, monkeypatch):
    """camkit's engine picks the component that agrees with the unsmoothed map; the original
    keeps the SVD's sign. Each image matches the original, or the original with the other
    sign (its projection negated); on this model the signs differ on some images."""
    model, x, classes = small_cnn(), images(4), [0, 3, 1, 2]
    ours = run(shim, name, model, [model[0][3]], x, classes, eigen_smooth=True)
    theirs = run(peer(), name, model, [model[0][3]], x, classes, eigen_smooth=True)
    for module in ("base_cam", "layer_cam"):  # where the original's classes look it up
        svd = __import__(f"pytorch_grad_cam.{module}", fromlist=["get_2d_projection"])
        original = svd.get_2d_projection
        monkeypatch.setattr(svd, "get_2d_projection", lambda a, f=original: -f(a))
    flipped = run(peer(), name, model, [model[0][3]], x, classes, eigen_smooth=True)
    same = [np.allclose(o, t, atol=1e-4, rtol=0) for o, t in zip(ours, theirs)]
    other = [np.allclose(o, f, atol=1e-4, rtol=0) for o, f in zip(ours, flipped)]
    assert all(s != o for s, o in zip(same, other)), (same, other)
    assert any(other), "the test should exercise a sign the original picks differently"


def run_sess(lib, model, layers, x, classes, base="GradCAM", **init) -> np.ndarray:
    """Each library's SESS over its own base class."""
    init = {**init, "base_method": getattr(lib, base)}
    return run(lib, "SESS", model, layers, x, classes, init=init)


@needs_grad_cam
@pytest.mark.parametrize(
    ("layers", "classes", "base", "options"),
    [
        ([3], [1, 2], "GradCAM", {"num_scales": 3}),
        ([1, 3], None, "GradCAM", {"num_scales": 3, "pool": "max", "pre_filter_ratio": 0.3}),
        ([3], [0, 4], "LayerCAM", {"scales": [24, 40], "window_size": 24, "step_size": 10}),
        ([3], [2, 3], "ScoreCAM", {"num_scales": 2, "theta": 0.05, "use_softmax_scores": False}),
        ([3], [1, 2], "GradCAM", {"num_scales": 2, "smooth": False, "batch_size": 3}),
    ],
)
def test_sess_matches_grad_cam(layers, classes, base, options):
    model = small_cnn()
    x = images(2)
    modules = [model[0][i] for i in layers]
    theirs = run_sess(peer(), model, modules, x, classes, base, **options)
    ours = run_sess(shim, model, modules, x, classes, base, **options)
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape == (2, 32, 32)
    # the shim's ScoreCAM agrees with the original's closely, not to rounding (see below)
    np.testing.assert_allclose(ours, theirs, atol=1e-3 if base == "ScoreCAM" else 1e-5, rtol=0)


@needs_grad_cam
def test_sess_passes_eigen_smooth_and_base_options_to_the_base_method():
    model = small_cnn()
    x = images(2)
    call = {"eigen_smooth": True}
    theirs = run(peer(), "SESS", model, [model[0][3]], x, [1, 2], init={"num_scales": 2}, **call)
    init = {"num_scales": 2, "legacy_numerics": True}  # the SVD sign NumPy picks
    ours = run(shim, "SESS", model, [model[0][3]], x, [1, 2], init=init, **call)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "init", [{"pool": "avg"}, {"pre_filter_ratio": 1.0}, {"num_scales": 0}, {"batch_size": 0}]
)
def test_sess_rejects_invalid_options_as_the_original(init):
    from camkit.errors import ConfigError

    model = small_cnn()
    with pytest.raises(ConfigError) as info:
        shim.SESS(model, [model[0][3]], **init)
    assert isinstance(info.value, ValueError)  # what the original raises


def test_sess_needs_a_base_class_of_the_shim():
    model = small_cnn()
    with pytest.raises(TypeError, match="base_method"):
        shim.SESS(model, [model[0][3]], base_method=object)


@needs_grad_cam
@pytest.mark.parametrize("name", ["GradCAM", "LayerCAM"])
def test_vit_with_reshape_transform_matches_grad_cam(name):
    model = tiny_vit()
    layer = model.encoder.layers[-1].ln_1

    def transform(t: Tensor) -> Tensor:
        return vit_reshape_transform(t, 4, 4)

    x = images(2)
    theirs_cam = getattr(peer(), name)(model, [layer], reshape_transform=transform)
    theirs = theirs_cam(x, None)
    ours = getattr(shim, name)(model, [layer], reshape_transform=transform)(x, None)
    assert ours.shape == (2, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def _gradcampp_weights(g: Tensor, a: Tensor) -> Tensor:
    denom = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g**2 / denom, torch.zeros_like(g))
    return (alpha * torch.relu(g)).sum((2, 3))


@needs_grad_cam
def test_gradcampp_without_the_epsilon_on_small_gradients():
    # An untrained model's gradients are ~1e-3 here: grad-cam's 1e-6 dominates 2 g^2.
    model, x = small_cnn(), images(1)
    with torch.no_grad():
        model[2].weight.mul_(0.01)
    store = {}
    handle = model[0][3].register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    score = model(x)[:, 2].sum()
    handle.remove()
    (g,) = torch.autograd.grad(score, store["a"])
    a = store["a"].detach()
    cam = torch.relu((_gradcampp_weights(g, a)[:, :, None, None] * a).sum(1))
    cam = cam - cam.amin()
    cam = cam / (cam.amax() + 1e-7)
    expected = nn.functional.interpolate(cam[None], (32, 32), mode="bilinear")[0]
    expected = expected - expected.amin()
    expected = (expected / (expected.amax() + 1e-7)).numpy()
    ours = run(shim, "GradCAMPlusPlus", model, [model[0][3]], x, [2])
    theirs = run(peer(), "GradCAMPlusPlus", model, [model[0][3]], x, [2])
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    assert np.abs(theirs - expected).max() > 1e-2
    legacy = run(
        shim, "GradCAMPlusPlus", model, [model[0][3]], x, [2], init={"legacy_numerics": True}
    )
    np.testing.assert_allclose(legacy, theirs, atol=ATOL, rtol=0)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("name", ["EigenCAM", "EigenGradCAM"])
def test_eigen_legacy_numerics_match_grad_cam(name):
    model = small_cnn()
    compare(name, model, [model[0][3]], images(2), [1, 2], {"legacy_numerics": True}, atol=1e-4)


@needs_contrib
def test_eigencam_sign_follows_the_activations():
    # camkit's Eigen-CAM never shows the complement: it correlates with the channel mean.
    model = small_cnn()
    ours = run(shim, "EigenCAM", model, [model[0][3]], images(3), None)
    with torch.no_grad():
        mean = model[0][:4](images(3)).mean(1, keepdim=True)
    mean = nn.functional.interpolate(mean, (32, 32), mode="bilinear")[:, 0].numpy()
    for m, ref in zip(ours, mean):
        assert np.corrcoef(m.ravel(), ref.ravel())[0, 1] > 0


@needs_grad_cam
@pytest.mark.slow
def test_scorecam_agrees_with_grad_cam():
    # grad-cam upsamples with align_corners=True and normalizes after upsampling; camkit
    # normalizes each channel first (as torchcam): the maps agree closely, not to rounding.
    model = small_cnn()
    theirs = run(peer(), "ScoreCAM", model, [model[0][3]], images(2), [1, 2])
    ours = run(shim, "ScoreCAM", model, [model[0][3]], images(2), [1, 2])
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99


def test_methods_not_in_camkit_say_so():
    # Every class of pytorch-grad-cam 1.5.7 has landed (next test); a placeholder for one that
    # has not raises MethodNotFoundError naming what camkit has.
    Missing = not_landed("pytorch-grad-cam", "SomeCAM")
    model = small_cnn()
    with pytest.raises(MethodNotFoundError, match="SomeCAM has not landed"):
        Missing(model, [model[0][3]])


@needs_grad_cam
def test_every_class_of_grad_cam_has_a_shim():
    original = peer()
    exported = sorted(n for n in dir(original) if isinstance(getattr(original, n), type))
    assert {"AblationLayerFasterRCNN", "ActivationsAndGradients", "GradCAM"} <= set(exported)
    missing = [n for n in exported if not isinstance(getattr(shim, n, None), type)]
    placeholders = [n for n in exported if n not in missing and n not in shim.__all__]
    placeholders += [
        n
        for n in exported
        if n not in missing and (getattr(shim, n).__doc__ or "").startswith("Not in camkit yet")
    ]
    assert missing == placeholders == []


def test_the_model_is_left_as_it_was():
    model = small_cnn().train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with shim.GradCAM(model, [model[0][3]]) as cam:
        cam(images(1), None)
    assert model.training and all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


# -- utils against the originals ----------------------------------------------------------


@needs_grad_cam
def test_image_helpers_match_grad_cam():
    original = peer().utils.image
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)
    torch.testing.assert_close(
        shim_image.preprocess_image(img, [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]),
        original.preprocess_image(img, [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]),
    )
    cams = rng.random((2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(
        shim_image.scale_cam_image(cams, (28, 21)), original.scale_cam_image(cams, (28, 21)),
        atol=1e-5,
    )  # fmt: skip
    np.testing.assert_allclose(shim_image.scale_cam_image(cams), original.scale_cam_image(cams))
    rgb = rng.random((16, 16, 3)).astype(np.float32)
    mask = rng.random((16, 16)).astype(np.float32)
    ours = shim_image.show_cam_on_image(rgb, mask, use_rgb=True).astype(int)
    theirs = original.show_cam_on_image(rgb, mask, use_rgb=True).astype(int)
    assert ours.dtype == int and ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 12  # camkit's jet, a few levels from OpenCV's


@needs_grad_cam
def test_model_targets_match_grad_cam():
    original = peer().utils.model_targets
    logits = torch.randn(2, 5)
    for name in ["ClassifierOutputTarget", "ClassifierOutputSoftmaxTarget", "ClassifierOutputReST"]:
        for out in (logits, logits[0]):
            ours = getattr(shim_targets, name)(3)(out)
            torch.testing.assert_close(ours, getattr(original, name)(3)(out))
    for name in ["SoftmaxOutputTarget", "RawScoresOutputTarget"]:
        torch.testing.assert_close(
            getattr(shim_targets, name)()(logits), getattr(original, name)()(logits)
        )
    torch.testing.assert_close(
        shim_targets.BinaryClassifierOutputTarget(0)(logits[:, 0]),
        original.BinaryClassifierOutputTarget(0)(logits[:, 0]),
    )
    mask = np.ones((4, 4), np.float32)
    dense = torch.randn(3, 4, 4)
    torch.testing.assert_close(
        shim_targets.SemanticSegmentationTarget(1, mask)(dense),
        original.SemanticSegmentationTarget(1, mask)(dense),
    )
    torch.testing.assert_close(
        shim_targets.FinerWeightedTarget(0, [1, 2], 0.6)(logits[0]),
        original.FinerWeightedTarget(0, [1, 2], 0.6)(logits[0]),
    )


@needs_grad_cam
def test_cam_mult_image_matches_grad_cam():
    from pytorch_grad_cam.metrics import cam_mult_image as original

    from camkit.compat.pytorch_grad_cam.metrics import cam_mult_image as ours

    model, x = small_cnn(), images(2)
    cams = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    targets = [shim_targets.ClassifierOutputTarget(c) for c in (1, 2)]
    for name in ["CamMultImageConfidenceChange", "DropInConfidence", "IncreaseInConfidence"]:
        np.testing.assert_allclose(
            getattr(ours, name)()(x, cams, targets, model),
            getattr(original, name)()(x, cams, targets, model),
            atol=1e-6,
        )


# -- re-expressed from pytorch-grad-cam's tests/ -------------------------------------------


@pytest.mark.parametrize("name", ["GradCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM", "ScoreCAM"])
@pytest.mark.parametrize("target_category", [None, 3])
@pytest.mark.parametrize("eigen_smooth", [True, False])
@pytest.mark.parametrize(("batch", "width", "height"), [(2, 32, 32), (1, 32, 40)])
def test_all_cam_models_can_run(name, target_category, eigen_smooth, batch, width, height):
    # test_run_all_models.py::test_all_cam_models_can_run (on a small CNN, no weights)
    model = small_cnn()
    x = torch.randn(batch, 3, height, width)
    cam = getattr(shim, name)(model=model, target_layers=[model[0][1], model[0][3]])
    cam.batch_size = 4
    targets = None if target_category is None else [shim_targets.ClassifierOutputTarget(3)] * batch
    out = cam(input_tensor=x, targets=targets, eigen_smooth=eigen_smooth)
    assert out.shape == (batch, height, width) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def test_one_channel():  # test_one_channel.py: a one-channel input model, batch of 16
    from torchvision.models import resnet18

    model = resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    x = torch.rand(1, 1, 32, 32).repeat(16, 1, 1, 1)
    with shim.GradCAM(model=model, target_layers=[model.layer4]) as cam:
        assert cam(input_tensor=x, targets=None).shape == (16, 32, 32)


def test_context_release():  # test_context_release.py: no hooks or memory kept across uses
    model = small_cnn()
    for _ in range(3):
        with shim.GradCAM(model=model, target_layers=[model[0][3]]) as cam:
            cam(images(1), [shim_targets.ClassifierOutputTarget(1)])
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_svd_no_side_effect():  # test_svd_no_side_effect.py, on the shim's eigen_smooth
    from camkit.compat.pytorch_grad_cam.base_cam import projection

    a = torch.zeros(1, 2, 2, 2)
    a[0, 0, 0, 0] = float("nan")
    a[0, 0, 1, 1] = 1.0
    a[0, 1] = torch.tensor([[2.0, 3.0], [4.0, 5.0]])
    snapshot = a.clone()
    projection(a)
    assert torch.equal(a.isnan(), snapshot.isnan()) and torch.equal(
        a.nan_to_num(), snapshot.nan_to_num()
    )


@needs_grad_cam
def test_xgradcam_legacy_numerics_match_grad_cam_on_near_zero_channels():
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model = mobilenet_v3_small(weights=None).eval()
    compare(
        "XGradCAM", model, [model.features[12]], images(2, 64), [5, 6], {"legacy_numerics": True}
    )
