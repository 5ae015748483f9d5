"""camkit.compat.torchcam against torchcam 0.5.0 (the oracle) and against the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_torchcam, small_cnn
from torch import Tensor, nn

from camkit.compat.torchcam import methods as shim
from camkit.compat.torchcam.methods.core import NotForwardedError
from camkit.errors import CamkitError

ATOL = 1e-5


def run(lib, name: str, model: nn.Module, layer, x: Tensor, classes, **kw) -> list[Tensor]:
    """torchcam's protocol: the user runs the model, then calls the extractor."""
    with getattr(lib, name)(model, layer, **kw) as extractor:
        scores = model(x)
        return extractor(classes, scores)


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", ["CAM", "GradCAM", "XGradCAM", "LayerCAM", "ScoreCAM"])
def test_matches_torchcam_on_a_small_cnn(name, batch):
    from torchcam import methods as peer

    model, x = small_cnn(), images(batch)
    classes = [i % 5 for i in range(batch)]
    kw = {"fc_layer": "2"} if name == "CAM" else {}
    ours = run(shim, name, model, "0.3", x, classes, **kw)
    theirs = run(peer, name, model, "0.3", x, classes, **kw)
    assert len(ours) == len(theirs) == 1
    assert ours[0].shape == theirs[0].shape == (batch, 16, 16)
    torch.testing.assert_close(ours[0], theirs[0], atol=ATOL, rtol=0)


@needs_torchcam
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", ["GradCAM", "XGradCAM", "LayerCAM", "GradCAMpp", "CAM"])
def test_matches_torchcam_on_resnet18(resnet, name, batch):
    from torchcam import methods as peer

    x = images(batch)
    kw_peer = {"fc_layer": "fc"} if name == "CAM" else {}
    kw = {**kw_peer, "legacy_numerics": True} if name == "GradCAMpp" else kw_peer
    layers = "layer4" if name == "CAM" else ["layer3", "layer4"]
    ours = run(shim, name, resnet, layers, x, 7, **kw)
    theirs = run(peer, name, resnet, layers, x, 7, **kw_peer)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def _gradcampp_reference(model: nn.Module, layer: nn.Module, x: Tensor, c: int) -> Tensor:
    """Grad-CAM++ from its formula, with its own hook and autograd call."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.setdefault("a", out))
    try:
        score = model(x)[:, c].sum()
    finally:
        handle.remove()
    a = store["a"]
    (g,) = torch.autograd.grad(score, a)
    a = a.detach()
    denom = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g**2 / denom, torch.zeros_like(g))
    w = (alpha * torch.relu(g)).sum((2, 3))
    cam = torch.relu((w[:, :, None, None] * a).sum(1))
    cam = cam - cam.amin((1, 2), keepdim=True)
    return cam / (cam.amax((1, 2), keepdim=True) + 1e-8)


@needs_torchcam
def test_gradcampp_is_the_formula_not_torchcams_weights():
    from torchcam import methods as peer

    model, x = small_cnn(), images(2)
    expected = _gradcampp_reference(model, model[0][3], x, 3)
    ours = run(shim, "GradCAMpp", model, "0.3", x, 3)[0]
    theirs = run(peer, "GradCAMpp", model, "0.3", x, 3)[0]
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    assert (theirs - expected).abs().max() > 1e-2  # torchcam's weights are sum g^2 ReLU(g)
    legacy = run(shim, "GradCAMpp", model, "0.3", x, 3, legacy_numerics=True)[0]
    torch.testing.assert_close(legacy, theirs, atol=ATOL, rtol=0)


@needs_torchcam
@pytest.mark.parametrize("name", ["SSCAM", "SmoothGradCAMpp"])
def test_noisy_methods_match_torchcam_without_noise(name):
    # Both draw noise from their own generators; with (almost) no noise they must agree.
    from torchcam import methods as peer

    model, x = small_cnn(), images(2)
    with torch.no_grad():  # gradients large enough that torchcam's 1e-8 epsilon is rounding
        model[2].weight.mul_(100)
    kw = {"std": 1e-7, "num_samples": 2}
    ours = run(shim, name, model, "0.3", x, [1, 2], **kw)[0]
    theirs = run(peer, name, model, "0.3", x, [1, 2], **kw)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_iscam_follows_the_documented_formula():
    model, x, n = small_cnn(channels=3), images(1), 4
    ours = run(shim, "ISCAM", model, "0.3", x, 2, num_samples=n)[0]
    with torch.no_grad():
        acts = model[0][:4](x)
        lo = acts.amin((2, 3), keepdim=True)
        masks = (acts - lo) / (acts.amax((2, 3), keepdim=True) - lo)
        up = nn.functional.interpolate(masks, x.shape[2:], mode="bilinear", align_corners=False)
        base = model(x)[0, 2]
        gains = torch.zeros(3)
        for k in range(3):
            for i in range(1, n + 1):
                gains[k] += model(i * (i - 1) / (2 * n) * up[:, k : k + 1] * x)[0, 2] - base
        w = torch.softmax(gains / n, 0)
        cam = torch.relu((w[None, :, None, None] * acts).sum(1))
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-8)
    torch.testing.assert_close(ours, cam, atol=ATOL, rtol=0)


def test_gradient_methods_reuse_the_users_forward(cnn):
    calls = []
    cnn.register_forward_pre_hook(lambda *_: calls.append(1))
    with shim.GradCAM(cnn, "0.3") as extractor:
        scores = cnn(images(2))
        extractor([0, 1], scores)
    assert len(calls) == 1  # camkit differentiated the user's graph: no second forward


def test_without_a_graph_the_maps_come_from_a_fresh_forward(cnn):
    x = images(2)
    with shim.GradCAM(cnn, "0.3") as extractor:
        with_graph = extractor([0, 1], cnn(x))[0]
        with torch.no_grad():
            scores = cnn(x)
        torch.testing.assert_close(extractor([0, 1], scores)[0], with_graph)


def test_camkits_extractor_is_made_as_the_forward_starts(cnn, monkeypatch):
    import camkit
    from camkit.errors import ConfigError

    with shim.GradCAM(cnn, "0.3") as extractor:
        assert extractor._extractor is None
        scores = cnn(images(2))
        made = extractor._extractor
        assert made is not None and made.layers == ["0.3"]
        extractor([0, 1], scores)
        assert extractor._extractor is made  # one per shim

    # A failure to make it does not break the user's forward: the call reports it.
    def broken(*args, **kwargs):
        raise ConfigError("no extractor today")

    monkeypatch.setattr(camkit, "create", broken)
    with shim.GradCAM(cnn, "0.3") as extractor:
        scores = cnn(images(2))
        with pytest.raises(ConfigError, match="no extractor today"):
            extractor([0, 1], scores)
    # Nor is it made while the forward is traced.
    with shim.GradCAM(cnn, "0.3") as extractor:
        torch.jit.trace(cnn, images(1), check_trace=False)
        assert extractor._extractor is None


def test_parameters_grads_are_untouched(cnn):
    for p in cnn.parameters():
        p.grad = torch.ones_like(p)
    with shim.GradCAMpp(cnn, "0.3") as extractor:
        extractor(1, cnn(images(1)))
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in cnn.parameters())


# -- re-expressed from torchcam's tests/test_methods_core.py -----------------------------


def test_cam_constructor(cnn):  # test_cam_constructor
    with pytest.raises(ValueError):
        shim.GradCAM(cnn, "3")
    with pytest.raises(TypeError):
        shim.GradCAM(cnn, 3)
    with pytest.raises(TypeError):
        shim.GradCAM(cnn, [3])
    with pytest.raises(ValueError):
        shim.GradCAM(cnn, nn.ReLU())


def test_cam_context_manager(cnn):  # test_cam_context_manager
    with shim.GradCAM(cnn, "0.3"):
        assert sum(len(m._forward_hooks) for m in cnn.modules()) == 1
    assert all(len(m._forward_hooks) == 0 for m in cnn.modules())
    assert all(len(m._forward_pre_hooks) == 0 for m in cnn.modules())


def test_cam_context_manager_cleans_up_on_exception(cnn):  # ..._cleans_up_on_exception
    with pytest.raises(RuntimeError), shim.GradCAM(cnn, "0.3") as extractor:
        raise RuntimeError("boom")
    assert len(extractor.hook_handles) == 0
    assert all(len(m._forward_hooks) == 0 for m in cnn.modules())


def test_cam_hooks_off_restores_state(cnn):  # test_cam_hooks_off_restores_state
    with shim.GradCAM(cnn, "0.3", enable_hooks=False) as extractor:
        assert not extractor._hooks_enabled
        with extractor._hooks_off():
            assert not extractor._hooks_enabled
        assert not extractor._hooks_enabled
        extractor.enable_hooks()
        with extractor._hooks_off():
            assert not extractor._hooks_enabled
        assert extractor._hooks_enabled


def test_cam_eval_mode_restores_state(cnn):  # test_cam_eval_mode_restores_state
    cnn.train()
    cnn[0][1].eval()
    with shim.GradCAM(cnn, "0.3") as extractor:
        with extractor._eval_mode():
            assert all(not m.training for m in cnn.modules())
        assert cnn.training and cnn[0][0].training and not cnn[0][1].training


def test_cam_remove_hooks_idempotent(cnn):  # test_cam_remove_hooks_idempotent
    with shim.GradCAM(cnn, "0.3") as extractor:
        extractor.remove_hooks()
        extractor.remove_hooks()
        assert len(extractor.hook_handles) == 0


def test_cam_precheck(cnn):  # test_cam_precheck
    with shim.GradCAM(cnn, "0.3") as extractor:
        with pytest.raises(AssertionError):
            extractor(0)
        with pytest.raises(NotForwardedError):
            extractor(0)
        scores = cnn(images(1))
        with pytest.raises(ValueError):
            extractor(-1, scores)
        with pytest.raises(ValueError):
            extractor([-1], scores)
        with pytest.raises(ValueError):
            extractor(0)  # gradient methods need the scores


def test_output_target_validation(cnn):  # test_output_target_validation
    with shim.CAM(cnn, "0.3", "2") as extractor:
        with pytest.raises(ValueError, match="exactly one"):
            extractor(0, targets=lambda out: out[0])
        with pytest.raises(ValueError, match="does not support"):
            extractor(targets=lambda out: out[0])


@pytest.mark.parametrize(
    ("shape", "spatial_dims"),
    [((8, 8), None), ((8, 8, 8), None), ((8, 8, 8), 2), ((8, 8, 8, 8), None), ((8, 8, 8, 8), 3)],
)
def test_cam_normalize(shape, spatial_dims):  # test_cam_normalize
    x = torch.rand(shape)
    out = shim.GradCAM._normalize(x, spatial_dims)
    assert out.shape == shape and not out.isnan().any()
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    dims = tuple(range(len(shape) - (spatial_dims or len(shape) - 1), len(shape)))
    flat = x - x.amin(dims, keepdim=True)
    torch.testing.assert_close(out, flat / (flat.amax(dims, keepdim=True) + 1e-8))


def test_cam_remove_hooks(cnn):  # test_cam_remove_hooks
    with shim.GradCAM(cnn, "0.3") as extractor:
        assert len(extractor.hook_handles) == 1
        assert all(a is None for a in extractor.hook_a)
        with torch.no_grad():
            cnn(torch.rand(1, 3, 32, 32))
        assert all(isinstance(a, Tensor) for a in extractor.hook_a)
        extractor.remove_hooks()
        assert len(extractor.hook_handles) == 0
        extractor.reset_hooks()
        with torch.no_grad():
            cnn(torch.rand(1, 3, 32, 32))
        assert all(a is None for a in extractor.hook_a)


def test_cam_repr(cnn):  # test_cam_repr
    with shim.GradCAM(cnn, "0.3") as extractor:
        assert repr(extractor) == "GradCAM(target_layer=['0.3'])"


def test_fuse_cams():  # test_fuse_cams
    with pytest.raises(TypeError):
        shim.GradCAM.fuse_cams(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError):
        shim.GradCAM.fuse_cams([])
    cams = [torch.rand(1, 32, 32), torch.rand(1, 16, 16)]
    assert torch.equal(shim.GradCAM.fuse_cams(cams[:1]), cams[0])
    fused = shim.GradCAM.fuse_cams(cams)
    up = nn.functional.interpolate(cams[1][None], (32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(fused, torch.maximum(cams[0], up[0]))
    assert shim.GradCAM.fuse_cams(cams, (16, 16)).shape == (1, 16, 16)
    layer = shim.LayerCAM.fuse_cams(cams)  # tanh(2 m), then upsampled, then the max
    up = nn.functional.interpolate(
        torch.tanh(2 * cams[1])[None], (32, 32), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(layer, torch.maximum(torch.tanh(2 * cams[0]), up[0]))


# -- re-expressed from torchcam's tests/test_methods_gradient.py ---------------------------


@pytest.mark.parametrize(
    "name", ["GradCAM", "GradCAMpp", "SmoothGradCAMpp", "XGradCAM", "LayerCAM"]
)
def test_img_cams_inplace_model(name):  # test_img_cams, "Inplace model" part
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(1),
        nn.Linear(8, 10),
    )
    for p in model.parameters():
        p.requires_grad_(False)
    with getattr(shim, name)(model, "2") as extractor:
        scores = model(images(1, 24))
        cam = extractor(int(scores[0].argmax()), scores)[0]
    assert cam.shape == (1, 24, 24) and not cam.isnan().any()


@pytest.mark.parametrize(
    "name", ["GradCAM", "GradCAMpp", "SmoothGradCAMpp", "XGradCAM", "LayerCAM"]
)
def test_video_cams(name):  # test_video_cams
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
    )
    x = torch.rand(1, 3, 8, 16, 16, requires_grad=True)
    with getattr(shim, name)(model, "0.3") as extractor:
        scores = model(x)
        cam = extractor(int(scores[0].argmax()), scores)[0]
    assert cam.shape == (1, 8, 16, 16) and not cam.isnan().any()


def test_smoothgradcampp_repr(cnn):  # test_smoothgradcampp_repr
    with shim.SmoothGradCAMpp(cnn, "0.3") as extractor:
        assert repr(extractor) == "SmoothGradCAMpp(target_layer=['0.3'], num_samples=4, std=0.3)"


# -- re-expressed from torchcam's tests/test_methods_activation.py -------------------------


def test_cam_single_layer_only(cnn):  # test_base_cam_constructor
    with pytest.raises(ValueError):
        shim.CAM(cnn, ["0.1", "0.3"], "2")
    with pytest.raises(TypeError):
        shim.CAM(cnn, "0.3", fc_layer=3)


@pytest.mark.parametrize("name", ["CAM", "ScoreCAM", "SSCAM", "ISCAM"])
def test_img_cams_activation(cnn, name):  # test_img_cams (activation methods)
    kw = {"fc_layer": "2"} if name == "CAM" else {"batch_size": 4}
    if name in ("SSCAM", "ISCAM"):
        kw["num_samples"] = 2
    with getattr(shim, name)(cnn, "0.3", **kw) as extractor, torch.inference_mode():
        cnn(images(2))
        cams = extractor([0, 1])
    assert cams[0].shape == (2, 16, 16) and not cams[0].isnan().any()
    assert cams[0].amin() >= 0 and cams[0].amax() <= 1


# -- re-expressed from torchcam's tests/test_utils.py and tests/test_metrics.py -------------


@pytest.mark.parametrize("shape", [(4, 4), (4, 4, 3)])
def test_overlay_mask(shape):  # test_overlay_mask
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    img = Image.fromarray(np.zeros(shape, dtype=np.uint8))
    mask = Image.fromarray(np.full((4, 4), 255, dtype=np.uint8))
    actual = overlay_mask(img, mask, alpha=0.7)
    expected = np.zeros((4, 4, 3), dtype=np.uint8)
    expected[..., 2] = 39
    assert isinstance(actual, Image.Image)
    assert np.abs(np.asarray(actual).astype(int) - expected).max() <= 1


def test_overlay_mask_parity_with_a_callable_colormap():  # test_overlay_mask_parity (custom)
    colors = pytest.importorskip("matplotlib.colors")
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    rng = np.random.default_rng(0)
    cmap = colors.ListedColormap(["black", "red", "white"])
    img = Image.fromarray(rng.integers(0, 256, (7, 9, 3), dtype=np.uint8))
    mask = Image.fromarray(rng.random((4, 5)).astype(np.float32), mode="F")
    overlay = mask.resize(img.size, resample=Image.Resampling.BICUBIC)
    heat = (255 * cmap(np.asarray(overlay) ** 2)[:, :, :3]).astype(np.uint8)
    expected = (0.5 * np.asarray(img) + 0.5 * heat).astype(np.uint8)
    actual = np.asarray(overlay_mask(img, mask, cmap, 0.5))
    assert np.abs(actual.astype(int) - expected.astype(int)).max() <= 1


def test_overlay_mask_errors():  # test_overlay_mask_errors
    from PIL import Image

    from camkit.compat.torchcam.utils import overlay_mask

    img, mask = Image.new("RGB", (4, 4)), Image.new("L", (4, 4))
    with pytest.raises(TypeError, match=r"img and mask arguments need to be PIL\.Image"):
        overlay_mask(np.zeros((4, 4, 3)), mask)
    with pytest.raises(ValueError):
        overlay_mask(img, mask, alpha=1.0)
    with pytest.raises(ValueError):
        overlay_mask(Image.new("RGBA", (4, 4)), mask)


@needs_torchcam
@pytest.mark.parametrize("metric", ["ClassificationMetric", "DeletionInsertionMetric"])
def test_metrics_match_torchcam(metric):  # test_classification_metric, test_deletion_insertion_*
    from functools import partial

    from torchcam import methods as peer
    from torchcam import metrics as peer_metrics

    from camkit.compat.torchcam import metrics as shim_metrics

    model, x = small_cnn(), images(2)
    summaries = []
    for lib, mlib in ((shim, shim_metrics), (peer, peer_metrics)):
        with lib.GradCAM(model, "0.3") as extractor:
            m = getattr(mlib, metric)(extractor, partial(torch.softmax, dim=-1))
            m.update(x)
            m.update(x, 2)
            summaries.append(m.summary())
    assert summaries[0].keys() == summaries[1].keys()
    for key in summaries[0]:
        assert summaries[0][key] == pytest.approx(summaries[1][key], abs=1e-5)


@needs_torchcam
@pytest.mark.parametrize("metric", ["ClassificationMetric", "DeletionInsertionMetric"])
@pytest.mark.parametrize("name", ["GradCAM", "ScoreCAM"])
@pytest.mark.parametrize("softmax", [False, True])
def test_metrics_with_output_targets_match_torchcam(metric, name, softmax):
    """``update(x, targets=...)``: one target for the batch, and one per sample (two samples
    sharing one), equal to torchcam's summaries."""
    from functools import partial
    from operator import itemgetter

    from torchcam import methods as peer
    from torchcam import metrics as peer_metrics

    from camkit.compat.torchcam import metrics as shim_metrics

    model, x = small_cnn(), images(3)
    shared = itemgetter(1)
    per_sample = [shared, lambda row: row[3] - row[0], shared]
    logits_fn = partial(torch.softmax, dim=-1) if softmax else None
    kwargs = {"steps": 5, "batch_size": 4} if metric == "DeletionInsertionMetric" else {}
    summaries = []
    for lib, mlib in ((shim, shim_metrics), (peer, peer_metrics)):
        with getattr(lib, name)(model, "0.3") as extractor:
            m = getattr(mlib, metric)(extractor, logits_fn, **kwargs)
            m.update(x, targets=itemgetter(2))
            m.update(x, targets=per_sample)
            summaries.append(m.summary())
    assert summaries[0].keys() == summaries[1].keys()
    for key in summaries[0]:
        assert summaries[0][key] == pytest.approx(summaries[1][key], abs=1e-5)


@pytest.mark.parametrize("metric", ["ClassificationMetric", "DeletionInsertionMetric"])
def test_metrics_reject_bad_output_targets(cnn, metric):
    from camkit.compat._shared import CompatTypeError
    from camkit.compat.torchcam import metrics as shim_metrics
    from camkit.errors import TargetError

    x = images(2)
    with shim.GradCAM(cnn, "0.3") as extractor:
        m = getattr(shim_metrics, metric)(extractor)
        with pytest.raises(TargetError, match="not both"):
            m.update(x, 1, targets=lambda row: row[0])
        with pytest.raises(CompatTypeError, match="callable"):
            m.update(x, targets=[0, 1])
        with pytest.raises(TargetError, match="one per sample"):
            m.update(x, targets=[lambda row: row[0]])
        with pytest.raises(TargetError, match="scalar"):
            m.update(x, targets=lambda row: row[:2])
        with pytest.raises(CompatTypeError, match="tensor"):
            m.update(x, targets=lambda row: 1.0)
        assert m.total == 0
        assert extractor._hooks_enabled


def test_metric_summary_needs_an_update(cnn):  # test_classification_metric (empty summary)
    from camkit.compat.torchcam.metrics import ClassificationMetric

    with shim.GradCAM(cnn, "0.3") as extractor, pytest.raises(CamkitError):
        ClassificationMetric(extractor).summary()


@needs_torchcam
def test_iscam_legacy_numerics_match_torchcam():
    from torchcam import methods as peer

    model, x = small_cnn(), images(2)
    ours = run(shim, "ISCAM", model, "0.3", x, [1, 2], num_samples=3, legacy_numerics=True)[0]
    theirs = run(peer, "ISCAM", model, "0.3", x, [1, 2], num_samples=3)[0]
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    default = run(shim, "ISCAM", model, "0.3", x, [1, 2], num_samples=3)[0]
    assert (default - theirs).abs().max() > 1e-3  # the documented formula differs


@needs_torchcam
def test_xgradcam_without_the_epsilon_on_near_zero_channels():
    # Untrained MobileNetV3 channels sum to ~1e-10: torchcam's + 1e-8 divides by ~0 there.
    from torchcam import methods as peer
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    model, x = mobilenet_v3_small(weights=None).eval(), images(1, 64)
    store = {}
    handle = model.features[12].register_forward_hook(lambda _m, _i, o: store.setdefault("a", o))
    score = model(x)[:, 5].sum()
    handle.remove()
    (g,) = torch.autograd.grad(score, store["a"])
    a = store["a"].detach()
    w = (g * a).sum((2, 3)) / a.sum((2, 3))
    cam = torch.relu((w[:, :, None, None] * a).sum(1))
    expected = (cam - cam.amin()) / (cam.amax() - cam.amin() + 1e-8)
    ours = run(shim, "XGradCAM", model, "features.12", x, 5)[0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    theirs = run(peer, "XGradCAM", model, "features.12", x, 5)[0]
    legacy = run(shim, "XGradCAM", model, "features.12", x, 5, legacy_numerics=True)[0]
    torch.testing.assert_close(legacy, theirs, atol=ATOL, rtol=0)


# -- re-expressed from torchcam's tests/test_explain.py ------------------------------------


@needs_torchcam
def test_explain_matches_torchcam(tmp_path):  # test_explain (predicted and expected classes)
    from PIL import Image
    from torchcam.explain import explain as peer_explain

    from camkit.compat.torchcam.explain import explain

    model, x = small_cnn(), images(1)
    ours = explain(model, x, expected_class_idx=4, target_layer="0.3")
    theirs = peer_explain(model, x, expected_class_idx=4, target_layer="0.3")
    assert ours.predicted_class_idx == theirs.predicted_class_idx
    assert sorted(ours.cams) == sorted(theirs.cams)
    for c in ours.cams:
        torch.testing.assert_close(ours.cams[c][0], theirs.cams[c][0], atol=ATOL, rtol=0)
    image = Image.new("RGB", (32, 32))
    ours.save(tmp_path / "ours", image)
    theirs.save(tmp_path / "theirs", image)
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == sorted(
        p.name for p in (tmp_path / "theirs").iterdir()
    )
    with pytest.raises(FileExistsError):
        ours.save(tmp_path / "ours", image)


def test_explain_rejects_bad_requests(cnn):  # test_explain_validates_* (argument checks)
    from camkit.compat.torchcam.explain import explain

    with pytest.raises(ValueError):
        explain(cnn.train(), images(1))
    cnn.eval()
    with pytest.raises(ValueError):
        explain(cnn, images(2))
    with pytest.raises(ValueError):
        explain(cnn, images(1), expected_class_idx=9, target_layer="0.3")
    with pytest.raises(TypeError):
        explain(cnn, images(1), method=dict)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        explain(cnn, images(1))
