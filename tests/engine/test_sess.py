"""The ``sess`` run option (SESS, Tursun et al. 2022): against a slow re-implementation written
here from the paper's steps, and against pytorch-grad-cam 1.5.7's ``SESS`` (the oracle)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import resize

import camkit
from camkit.engine.sess import SESSOptions
from camkit.errors import ConfigError


def pearson(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a).ravel(), np.asarray(b).ravel())[0, 1])


def starts(length: int, step: int, window: int) -> list[int]:
    out, start = [], 0
    while True:
        if start + window >= length:
            out.append(max(length - window, 0))
            return out
        out.append(start)
        start += step


def blur(cam: np.ndarray, taps: int = 11, sigma: float = 5.0) -> np.ndarray:
    """A direct 2-D Gaussian convolution, borders mirrored without repeating the edge."""
    g = np.exp(-((np.arange(taps) - taps // 2) ** 2) / (2 * sigma**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    padded = np.pad(cam.astype(np.float64), taps // 2, mode="reflect")
    views = np.lib.stride_tricks.sliding_window_view(padded, (taps, taps))
    return (views * kernel).sum((-1, -2))


def slow_sess(
    method: str, model: nn.Module, layer: str, x: Tensor, classes: list[int], **opts
) -> np.ndarray:
    """SESS image by image, window by window, each window's map from its own extractor call."""
    cam = camkit.create(method, model, layer)
    out = []
    for image, c in zip(x, classes):
        height, width = image.shape[1:]
        window = opts.get("window_size") or min(height, width)
        step = opts.get("step_size") or window
        scales = opts.get("scales") or [
            window + round(window * 2 / 7) * i for i in range(opts.get("num_scales", 12))
        ]
        found = []
        for scale in scales:
            scaled = resize(image[None], [scale], antialias=True)
            for y in starts(scaled.shape[2], step, window):
                for x0 in starts(scaled.shape[3], step, window):
                    found.append(
                        (scaled[:, :, y : y + window, x0 : x0 + window], y, x0, scaled.shape[2:])
                    )
        scores = []
        for patch, *_ in found:
            with torch.no_grad():
                logits = model(patch)
            probs = logits.softmax(1) if opts.get("use_softmax_scores", True) else logits
            scores.append(max(float(probs[0, c]), 0.0))
        order = np.argsort(np.array(scores), kind="stable")
        order = order[int(len(order) * opts.get("pre_filter_ratio", 0.0)) :]
        top = scores[order[-1]]
        total, counts = np.zeros((height, width)), np.zeros((height, width))
        for p in order:
            patch, y, x0, size = found[p]
            weight = scores[p] / top if top > 0 else 1.0
            canvas = torch.zeros(1, 1, *size)
            canvas[0, 0, y : y + window, x0 : x0 + window] = cam(patch, [c]).maps[0] * weight
            pasted = F.interpolate(canvas, (height, width), mode="bilinear", align_corners=False)
            pasted = pasted[0, 0].double().numpy()
            if opts.get("pool", "mean") == "max":
                total = np.maximum(total, pasted)
            else:
                keep = pasted > opts.get("theta", 0.0)
                total[keep] += pasted[keep]
                counts += keep
        fused = (
            total
            if opts.get("pool") == "max"
            else np.where(counts > 0, total / np.maximum(counts, 1), 0)
        )
        if opts.get("smooth", True):
            fused = blur(fused)
        out.append((fused - fused.min()) / (fused.max() - fused.min()))
    return np.array(out, dtype=np.float32)


CASES = [
    {"num_scales": 3},
    {"num_scales": 2, "pool": "max", "smooth": False, "pre_filter_ratio": 0.3},
    {
        "scales": [24, 40],
        "window_size": 24,
        "step_size": 10,
        "theta": 0.1,
        "use_softmax_scores": False,
    },
]


@pytest.mark.parametrize("opts", CASES)
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "cam"])
def test_sess_matches_a_slow_re_implementation(tiny, method, opts):
    x = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))
    expected = slow_sess(method, tiny, "features", x, [1, 3], **opts)
    res = camkit.create(method, tiny, "features", sess=opts, batch_size=5)(x, [1, 3])
    np.testing.assert_allclose(res.maps.numpy(), expected, atol=2e-5, rtol=0)
    assert res.targets.tolist() == [1, 3] and res.maps.shape == (2, 32, 40)
    assert list(res.layer_maps) == ["features"] and res.layer_maps["features"].shape == (2, 32, 40)


def test_sess_explains_each_images_predicted_class_and_callable_targets(tiny):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    predicted = tiny(x).argmax(1).tolist()
    cam = camkit.create("gradcam", tiny, "features", sess={"num_scales": 2})
    res = cam(x)
    assert res.targets.tolist() == predicted
    torch.testing.assert_close(res.maps, cam(x, predicted).maps)
    # a callable target (scores, index) sees each window's row with its image's index
    pick = torch.tensor(predicted)
    by_callable = cam(x, lambda scores, index: scores[torch.arange(len(index)), pick[index]])
    torch.testing.assert_close(by_callable.maps, res.maps, atol=1e-6, rtol=0)


def grad_cam():
    pytest.importorskip("pytorch_grad_cam")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return pytorch_grad_cam, ClassifierOutputTarget


@pytest.mark.parametrize(
    "opts",
    [{"num_scales": 3}, {"num_scales": 2, "pool": "max", "step_size": 40, "pre_filter_ratio": 0.4}],
)
def test_sess_matches_grad_cam_on_resnet18(resnet18, x64, opts):
    lib, Target = grad_cam()
    theirs = lib.SESS(resnet18, [resnet18.layer4[-1]], **opts)(x64, [Target(3), Target(7)])
    ours = camkit.create("gradcam", resnet18, "layer4", sess=opts)(x64, [3, 7]).maps
    for a, b in zip(ours, theirs):
        assert pearson(a, b) >= 0.999


def test_sess_matches_grad_cam_with_a_score_method(tiny):
    lib, Target = grad_cam()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    opts = {"scales": [32, 48], "theta": 0.05, "use_softmax_scores": False}
    # features.0: full resolution, where camkit's and the original's normalizations coincide
    theirs = lib.SESS(tiny, [tiny.features[0]], base_method=lib.ScoreCAM, **opts)(
        x, [Target(2), Target(0)]
    )
    ours = camkit.create("scorecam", tiny, "features.0", sess=opts)(x, [2, 0]).maps
    for a, b in zip(ours, theirs):
        assert pearson(a, b) >= 0.999


def test_sess_window_forwards_are_batched(tiny):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    batches: list[int] = []
    handle = tiny.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        camkit.create("gradcam", tiny, "features", sess={"num_scales": 3}, batch_size=4)(x, [1])
    finally:
        handle.remove()
    windows = 1 + 4 + 4  # scales 32, 41, 50 with 32-pixel windows: 1, 2 x 2, 2 x 2
    assert batches[0] == 1 and max(batches) == 4
    assert len(batches) == 1 + 2 * math.ceil(windows / 4)  # clean, scores, window maps


def test_sess_true_takes_the_defaults_and_combines_with_other_options(tiny):
    options = camkit.RunOptions(sess=True, eigen_smooth=True)
    assert options.sess == SESSOptions() and options.sess.num_scales == 12
    assert camkit.RunOptions(sess=False).sess is None
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    res = camkit.create("gradcam", tiny, "features", sess={"num_scales": 2}, aug_smooth=True)(
        x, [1]
    )
    assert (
        res.maps.shape == (1, 32, 32) and 0 <= float(res.maps.min()) <= float(res.maps.max()) <= 1
    )


@pytest.mark.parametrize(
    "sess",
    [
        "yes",
        {"pool": "avg"},
        {"pre_filter_ratio": 1.0},
        {"num_scales": 0},
        {"scales": []},
        {"scales": [0, 32]},
        {"window_size": 0},
        {"windows": 3},
        {"smooth": "no"},
    ],
)
def test_invalid_sess_options_are_config_errors(tiny, sess):
    with pytest.raises(ConfigError, match="sess"):
        camkit.create("gradcam", tiny, "features", sess=sess)


def test_sess_options_that_do_not_fit_the_input_are_config_errors(tiny, x32):
    with pytest.raises(ConfigError, match="at least the window size"):
        camkit.create("gradcam", tiny, "features", sess={"scales": [16]})(x32)
    with pytest.raises(ConfigError, match="larger than the input"):
        camkit.create("gradcam", tiny, "features", sess={"window_size": 48})(x32)


def test_sess_leaves_the_model_as_it_was(tiny, x32, no_hooks):
    model = tiny.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    camkit.create("gradcam", model, "features", sess={"num_scales": 2})(x32, [1, 2])
    assert model.training
    no_hooks(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


ENGINE = """
[data]
count = 2

[engine]
aug_smooth = true
eigen_smooth = true

[engine.sess]
num_scales = 2
pool = "max"

[[methods]]
name = "gradcam"
layer = "features"

[[methods]]
name = "cam"
sess = false

[output]
folder = "{folder}"
"""


def test_experiment_engine_tables_accept_the_smoothing_options(tmp_path: Path):
    from camkit.experiment.config import load_config

    path = tmp_path / "exp.toml"
    path.write_text(ENGINE.format(folder=(tmp_path / "out").as_posix()))
    config = load_config(path)
    assert config.engine.aug_smooth and config.engine.eigen_smooth
    assert config.engine.sess == SESSOptions(num_scales=2, pool="max")
    assert config.comparable()["engine"]["sess"]["num_scales"] == 2
    path.write_text(ENGINE.replace('pool = "max"', 'pool = "median"').format(folder="out"))
    with pytest.raises(ConfigError, match="pool"):
        load_config(path)
