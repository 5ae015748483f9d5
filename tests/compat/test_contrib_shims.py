"""The shims computed by camkit-contrib and camkit.metrics' ROAD, against the originals.

pytorch-grad-cam 1.5.7: FEM, KPCA_CAM, SegEigenCAM, EigenCAM's centring, FinerCAM, RefineCAM,
metrics.road; torchcam 0.5.0: FinerCAM, RefineCAM.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_contrib, needs_grad_cam, needs_torchcam, small_cnn
from torch import Tensor, nn

import camkit.compat.pytorch_grad_cam as shim
import camkit.compat.pytorch_grad_cam.metrics.road as shim_road
from camkit.compat.pytorch_grad_cam.utils import model_targets as shim_targets
from camkit.compat.torchcam import methods as tc_shim
from camkit.errors import ConfigError, MethodNotFoundError, TargetError

ATOL = 1e-5


def grad_cam():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam

    return pytorch_grad_cam


def layers(model: nn.Module) -> list[nn.Module]:
    return [model[0][1], model[0][3]]


def grad_cam_maps(lib, name, model, x, classes=None, init=None, cls=None, **call) -> np.ndarray:
    """``name``'s maps (``cls`` instead of the class when given) of the last layer, or of the
    two layers when ``name``'s layers' signs cannot disagree."""
    targets_mod = shim_targets if lib is shim else lib.utils.model_targets
    targets = None if classes is None else [targets_mod.ClassifierOutputTarget(c) for c in classes]
    signed = name in ("KPCA_CAM", "EigenCAM", "EigenGradCAM")  # one sign per layer
    target_layers = layers(model)[1:] if signed else layers(model)
    cam = (cls or getattr(lib, name))(model, target_layers, **(init or {}))
    return cam(x, targets, **call)  # (grad-cam's RefineCAM is no context manager)


def compare_grad_cam(name, x, classes=None, ours_init=None, theirs_init=None, **call):
    model = small_cnn()
    theirs = grad_cam_maps(grad_cam(), name, model, x, classes, theirs_init, **call)
    ours = grad_cam_maps(shim, name, model, x, classes, ours_init or theirs_init, **call)
    assert ours.dtype == theirs.dtype == np.float32
    assert ours.shape == theirs.shape == (x.shape[0], *x.shape[2:])
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    return ours


# -- pytorch-grad-cam: methods ----------------------------------------------------------


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    ("name", "init"), [("FEM", {}), ("FEM", {"k": 1}), ("SegEigenCAM", {})], ids=str
)
def test_fem_and_seg_eigen_cam_match_grad_cam(name, init, batch):
    compare_grad_cam(name, images(batch), [i % 5 for i in range(batch)], theirs_init=init)


def _either_sign(ours: np.ndarray, theirs: np.ndarray, flipped: np.ndarray) -> None:
    """Each image's map is the original's, or the original's with the opposite SVD sign."""
    for i, (m, a, b) in enumerate(zip(ours, theirs, flipped)):
        err = min(np.abs(m - a).max(), np.abs(m - b).max())
        assert err < 1e-4, f"image {i}: off by {err} from both signs of the original"


def _flipped(cls: type) -> type:
    """The original's class with the raw map negated (its SVD's other sign)."""

    class Flipped(cls):
        def get_cam_image(self, *args, **kwargs):
            return -super().get_cam_image(*args, **kwargs)

    return Flipped


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("kernel", ["sigmoid", "rbf", "cosine"])
def test_kpca_cam_matches_grad_cam_up_to_the_sign(kernel):
    # scikit-learn orients the eigenvector by its largest entry, camkit toward the channel
    # mean: after the ReLU a map is the original's or the original with the other sign.
    model, x, init = small_cnn(), images(3), {"kernel": kernel}
    theirs = grad_cam_maps(grad_cam(), "KPCA_CAM", model, x, None, init)
    flipped = grad_cam_maps(
        grad_cam(), "KPCA_CAM", model, x, None, init, _flipped(grad_cam().KPCA_CAM)
    )
    ours = grad_cam_maps(shim, "KPCA_CAM", model, x, None, init)
    assert not np.allclose(theirs, flipped, atol=1e-2)  # the two signs are told apart
    _either_sign(ours, theirs, flipped)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("name", ["EigenCAM", "EigenGradCAM"])
def test_eigen_methods_are_centred_as_grad_cam(name):
    # The default shim is camkit's Eigen-CAM with center=True: the original's map up to sign.
    model, x = small_cnn(), images(3)
    theirs = grad_cam_maps(grad_cam(), name, model, x, [0, 1, 2])
    flipped = grad_cam_maps(
        grad_cam(), name, model, x, [0, 1, 2], None, _flipped(getattr(grad_cam(), name))
    )
    _either_sign(grad_cam_maps(shim, name, model, x, [0, 1, 2]), theirs, flipped)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize(
    "call",
    [{}, {"alpha": 0.5}, {"comparison_categories": [1, 3], "target_idx": 2}],
    ids=["defaults", "alpha", "references"],
)
@pytest.mark.parametrize("base", ["GradCAM", "LayerCAM"])
def test_finer_cam_matches_grad_cam(base, call):
    ours = compare_grad_cam(
        "FinerCAM", images(3), ours_init={"base_method": getattr(shim, base)},
        theirs_init={"base_method": getattr(grad_cam(), base)}, **call,
    )  # fmt: skip
    model = small_cnn()
    plain = grad_cam_maps(shim, base, model, images(3), None)
    assert np.abs(ours - plain).max() > 1e-2  # the contrast changes the maps


@needs_grad_cam
@needs_contrib
def test_finer_cam_with_targets_is_the_base_method():
    model, x = small_cnn(), images(2)
    ours = grad_cam_maps(shim, "FinerCAM", model, x, [3, 4])
    np.testing.assert_allclose(ours, grad_cam_maps(shim, "GradCAM", model, x, [3, 4]), atol=0)


@needs_grad_cam
@needs_contrib
@pytest.mark.parametrize("base", ["LayerCAM", "GradCAM", "GradCAMPlusPlus"])
def test_refine_cam_matches_grad_cam(base):
    ours_init = {"base_method": getattr(shim, base)}
    if base == "GradCAMPlusPlus":
        ours_init["legacy_numerics"] = True  # the original's epsilon in alpha
    compare_grad_cam(
        "RefineCAM", images(2), [1, 2], ours_init=ours_init,
        theirs_init={"base_method": getattr(grad_cam(), base)},
    )  # fmt: skip


# -- pytorch-grad-cam: ROAD -------------------------------------------------------------


def _road_inputs():
    x = images(2, size=12)
    cams = np.random.default_rng(0).random((2, 12, 12)).astype(np.float32)  # no ties
    return small_cnn(), x, cams


def _softmax_targets(lib, classes=(1, 2)):
    return [lib.ClassifierOutputSoftmaxTarget(c) for c in classes]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # in the original
@needs_grad_cam
@pytest.mark.parametrize("percentile", [10, 55, 90])
@pytest.mark.parametrize("name", ["ROADMostRelevantFirst", "ROADLeastRelevantFirst"])
def test_road_matches_grad_cam_without_noise(name, percentile):
    import pytorch_grad_cam.metrics.road as road
    import pytorch_grad_cam.utils.model_targets as targets

    model, x, cams = _road_inputs()
    theirs_metric = getattr(road, name)(percentile)
    theirs_metric.perturbation.imputer.noise = 0
    ours_metric = getattr(shim_road, name)(percentile)
    ours_metric.imputer.noise = 0
    theirs, theirs_x = theirs_metric(x, cams, _softmax_targets(targets), model, True)
    ours, ours_x = ours_metric(x, cams, _softmax_targets(shim_targets), model, True)
    assert ours.dtype == np.float32 and ours.shape == (2,)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours_x, theirs_x, atol=1e-5, rtol=0)
    assert not torch.equal(ours_x, x)  # pixels were imputed
    after = ours_metric(x, cams, _softmax_targets(shim_targets), model, return_diff=False)
    with torch.no_grad():
        outputs = model(x)
    clean = np.float32([t(o).item() for t, o in zip(_softmax_targets(shim_targets), outputs)])
    np.testing.assert_allclose(after - clean, ours, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # in the original
@needs_grad_cam
@pytest.mark.parametrize(
    "name", ["ROADMostRelevantFirstAverage", "ROADLeastRelevantFirstAverage", "ROADCombined"]
)
def test_road_averages_match_grad_cam_without_noise(name, monkeypatch):
    import pytorch_grad_cam.metrics.road as road
    import pytorch_grad_cam.utils.model_targets as targets

    # both build their imputers at call time from the module's NoisyLinearImputer
    for module in (road, shim_road):
        silent = type("Silent", (module.NoisyLinearImputer,), {})
        silent.__init__ = lambda self, *a, _base=module.NoisyLinearImputer, **k: _base.__init__(
            self, noise=0.0
        )
        monkeypatch.setattr(module, "NoisyLinearImputer", silent)
    model, x, cams = _road_inputs()
    theirs = getattr(road, name)([20, 50, 80])(x, cams, _softmax_targets(targets), model)
    ours = getattr(shim_road, name)([20, 50, 80])(x, cams, _softmax_targets(shim_targets), model)
    assert ours.shape == (2,)
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_road_splits_ties_at_the_threshold_by_position():
    # A map that is 0 on all but 4 pixels: the original removes every pixel at or above the
    # 50th percentile (0), the whole image; camkit removes exactly half of the pixels.
    model, x = small_cnn(), images(1, size=8)
    cams = np.zeros((1, 8, 8), np.float32)
    cams[0, :2, :2] = 1
    metric = shim_road.ROADMostRelevantFirst(50)
    _, imputed = metric(x, cams, _softmax_targets(shim_targets, (0,)), model, True)
    changed = (imputed != x).any(1)[0]
    assert int(changed.sum()) == 32
    assert bool(changed[:2, :2].all())  # the salient pixels are among those removed


@pytest.mark.parametrize("percentile", [0, 100, "auto"])
def test_road_rejects_percentiles_it_cannot_apply(percentile):
    with pytest.raises(ConfigError, match="percentile"):
        shim_road.ROADMostRelevantFirst(percentile)


def test_road_noise_follows_torchs_global_generator():
    model, x, cams = _road_inputs()
    metric = shim_road.ROADMostRelevantFirst(50)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append(metric(x, cams, _softmax_targets(shim_targets), model, True)[1])
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


# -- torchcam ---------------------------------------------------------------------------


def torchcam_maps(lib, name, layer, classes, init, **call) -> list[Tensor]:
    model = small_cnn()
    x = images(3)
    with getattr(lib, name)(model, layer, **init) as extractor:
        return extractor(classes, model(x), **call)


def compare_torchcam(name, layer, classes, base, ours_extra=None, init=None, **call):
    import torchcam.methods as peer

    theirs = torchcam_maps(
        peer, name, layer, classes, {**(init or {}), "base_method": getattr(peer, base)}, **call
    )
    ours_init = {**(init or {}), **(ours_extra or {}), "base_method": getattr(tc_shim, base)}
    ours = torchcam_maps(tc_shim, name, layer, classes, ours_init, **call)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    return ours


def _legacy(base: str) -> dict:
    return {"legacy_numerics": True} if base == "GradCAMpp" else {}


@needs_torchcam
@needs_contrib
@pytest.mark.parametrize(
    ("call", "init"),
    [
        ({}, {}),
        ({"comparison_idx": [0, 4]}, {}),
        ({"comparison_idx": [[0], [1], [4]]}, {}),
        ({}, {"gamma": 1.0, "num_references": 2}),
    ],
    ids=["defaults", "shared-references", "per-sample-references", "gamma"],
)
@pytest.mark.parametrize("base", ["GradCAM", "LayerCAM", "GradCAMpp"])
def test_torchcam_finer_cam_matches_torchcam(base, call, init):
    ours = compare_torchcam("FinerCAM", "0.3", [1, 2, 3], base, _legacy(base), init, **call)
    plain = torchcam_maps(tc_shim, base, "0.3", [1, 2, 3], _legacy(base))
    assert (ours[0] - plain[0]).abs().max() > 1e-2  # the contrast changes the maps


@needs_torchcam
@needs_contrib
@pytest.mark.parametrize("base", ["LayerCAM", "GradCAM", "GradCAMpp"])
def test_torchcam_refine_cam_matches_torchcam(base):
    ours = compare_torchcam("RefineCAM", ["0.1", "0.3"], 2, base, _legacy(base))
    assert ours[0].shape == (3, 32, 32)
    compare_torchcam(
        "RefineCAM", ["0.1", "0.3"], [0, 1, 2], base, _legacy(base), target_shape=(8, 8)
    )


@needs_contrib
def test_torchcam_refine_cam_arguments(cnn):
    with pytest.raises(ConfigError, match="two or more"):
        tc_shim.RefineCAM(cnn, ["0.3"])
    with tc_shim.RefineCAM(cnn, ["0.1", "0.3"], base_method=tc_shim.LayerCAM) as extractor:
        assert repr(extractor) == "RefineCAM(base_method=LayerCAM, target_layer=['0.1', '0.3'])"
        scores = cnn(images(1))
        with pytest.raises(ConfigError, match="normalizes"):
            extractor(0, scores, normalized=False)
    assert not cnn[0][1]._forward_hooks  # the base extractor's hooks are removed


@needs_contrib
def test_torchcam_finer_cam_needs_scores(cnn):
    with tc_shim.FinerCAM(cnn, "0.3") as extractor:
        cnn(images(1))
        with pytest.raises(TargetError, match="scores"):
            extractor(0)


# -- without camkit-contrib ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("lib", "name"),
    [(shim, n) for n in ("FinerCAM", "RefineCAM")] + [(tc_shim, n) for n in ("FinerCAM",)],
)
def test_without_contrib_the_error_says_how_to_install_it(lib, name, monkeypatch):
    monkeypatch.setitem(sys.modules, "camkit_contrib", None)  # import fails
    model = small_cnn()
    layer = layers(model) if lib is shim else "0.3"
    with pytest.raises(MethodNotFoundError, match=r"pip install \./plugins/camkit-contrib"):
        getattr(lib, name)(model, layer)


# -- ResNet-18 (slow) ---------------------------------------------------------------------


@needs_grad_cam
@needs_contrib
@pytest.mark.slow
@pytest.mark.parametrize("name", ["FEM", "SegEigenCAM", "FinerCAM", "RefineCAM"])
def test_grad_cam_shims_match_on_resnet18(resnet, name):
    target_layers = [resnet.layer3[-1], resnet.layer4[-1]]
    base = {"base_method": "LayerCAM"} if name == "RefineCAM" else {}
    x = images(2, size=128)  # FEM's k = 2 needs more than 5 locations (camkit's LayerError)
    theirs_cam = getattr(grad_cam(), name)(
        resnet, target_layers, **{k: getattr(grad_cam(), v) for k, v in base.items()}
    )
    ours_cam = getattr(shim, name)(
        resnet, target_layers, **{k: getattr(shim, v) for k, v in base.items()}
    )
    np.testing.assert_allclose(ours_cam(x, None), theirs_cam(x, None), atol=1e-4, rtol=0)


@needs_torchcam
@needs_contrib
@pytest.mark.slow
@pytest.mark.parametrize("name", ["FinerCAM", "RefineCAM"])
def test_torchcam_shims_match_on_resnet18(resnet, name):
    import torchcam.methods as peer

    x = images(2, size=64)
    layer = ["layer3", "layer4"]
    maps = []
    for lib in (peer, tc_shim):
        with getattr(lib, name)(resnet, layer, base_method=lib.LayerCAM) as extractor:
            maps.append(extractor([1, 2], resnet(x)))
    for ours, theirs in zip(maps[1], maps[0]):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
