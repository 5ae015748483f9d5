"""The layout of the extractor's forward pass: channels-last copies of the input where torch's
CPU convolutions run them faster, the same maps as a forward of the input as given, and a
model that rejects channels-last inputs explained all the same."""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.accel import capabilities, hardware, layout


class Net(nn.Module):
    """Records the layout of each input; ``groups`` > 1 makes the second conv grouped;
    ``view`` flattens with ``.view``, which fails on channels-last features."""

    def __init__(self, groups: int = 1, view: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.fc = nn.Linear(8, 5)
        self.view = view
        self.layouts: list[str] = []

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        self.layouts.append("nhwc" if channels_last and not x.is_contiguous() else "nchw")
        f = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        if self.view:  # flattening (C, H, W) with .view needs NCHW-contiguous features
            return self.fc(f.view(f.shape[0], -1).view(f.shape[0], 8, -1).mean(2))
        return self.fc(f.mean((2, 3)))


@pytest.fixture(autouse=True)
def convolutions_run_channels_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about camkit's layout logic, not this CPU: the channels-last capability
    is on (safe anywhere: torch runs channels-last inputs on every CPU, if slower), whatever
    the probe or an outer ``CAMKIT_CPU_CAPS`` says."""
    outer = os.environ.get(hardware.ENV, "")
    kept = [i for i in outer.split(",") if i.strip() and i.strip().lstrip("+-") != "channels_last"]
    if kept and all(i.strip()[0] in "+-" for i in kept):
        monkeypatch.setenv(hardware.ENV, ",".join([*kept, "+channels_last"]))
    else:  # no override, or a full list: only the capability this file needs
        monkeypatch.setenv(hardware.ENV, "+channels_last")


def _inputs(batch: int) -> Tensor:
    return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize(
    ("groups", "batch", "layout"),
    [(1, 1, "nchw"), (1, 3, "nhwc"), (4, 1, "nhwc"), (4, 3, "nhwc")],
)
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_the_layout_each_forward_gets(groups: int, batch: int, layout: str, method: str) -> None:
    torch.manual_seed(0)
    model = Net(groups).eval()
    x = _inputs(batch)
    result = camkit.create(method, model, "conv2")(x)
    assert model.layouts == [layout]
    with torch.no_grad():
        expected_scores = model(x)
    torch.testing.assert_close(result.scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert x.is_contiguous()  # the caller's tensor is untouched


@pytest.mark.parametrize("method", ["cam", "gradcam", "layercam", "scorecam"])
def test_maps_equal_those_of_a_forward_as_given(method: str) -> None:
    torch.manual_seed(0)
    x = _inputs(3)
    fast = camkit.create(method, Net(groups=4).eval(), "conv2")(x)
    torch.manual_seed(0)
    plain_model = Net(groups=4).eval()
    plain = camkit.create(method, plain_model, "conv2")
    plain._accel.rejected_channels_last()  # the forward as given, as before layouts were chosen
    slow = plain(x)
    assert plain_model.layouts[0] == "nchw"
    torch.testing.assert_close(fast.maps, slow.maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.scores, slow.scores, rtol=1e-5, atol=1e-5)


def test_methods_see_contiguous_activations_and_gradients() -> None:
    seen: list[bool] = []

    class Probe(camkit.Method):
        name = "test-layout-probe"
        needs_gradients = True

        def weights(self, ctx: camkit.Context) -> Tensor:
            seen.extend([ctx.activations.is_contiguous(), ctx.gradients.is_contiguous()])
            return ctx.gradients.mean((2, 3))

    torch.manual_seed(0)
    model = Net(groups=4).eval()
    camkit.Extractor(Probe(), model, "conv2")(_inputs(2))
    assert model.layouts == ["nhwc"] and seen == [True, True]


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_a_model_rejecting_channels_last_is_run_as_given(method: str) -> None:
    torch.manual_seed(0)
    model = Net(view=True).eval()
    x = _inputs(3)
    extractor = camkit.create(method, model, "conv2")
    first = extractor(x)
    assert model.layouts == ["nhwc", "nchw"]  # failed, then ran as given
    second = extractor(x)
    assert model.layouts == ["nhwc", "nchw", "nchw"]  # remembered
    torch.testing.assert_close(first.maps, second.maps)
    with torch.no_grad():
        torch.testing.assert_close(first.scores, model(x), rtol=1e-5, atol=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_a_model_that_fails_either_way_raises_its_own_error() -> None:
    class Broken(Net):
        def forward(self, x: Tensor) -> Tensor:
            super().forward(x)
            raise RuntimeError("broken model")

    model = Broken().eval()
    extractor = camkit.create("cam", model, "conv2")
    with pytest.raises(RuntimeError, match="broken model"):
        extractor(_inputs(2))
    assert model.layouts == ["nhwc", "nchw"]
    assert extractor._accel.explain_channels_last(_inputs(2))  # still tried next time
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_no_channels_last_without_convolutions_or_off_the_cpu_path() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    extractor = camkit.create("gradcam", model, "1", layout="tokens", grid=(2, 2))
    assert not extractor._accel.explain_channels_last(_inputs(3))
    conv = camkit.create("gradcam", Net().eval(), "conv2")
    assert conv._accel.explain_channels_last(_inputs(3))
    assert not conv._accel.explain_channels_last(torch.randn(2, 3, 2, 6, 6))  # videos
    assert not conv._accel.explain_channels_last(
        _inputs(3).contiguous(memory_format=torch.channels_last)
    )


class Permuted(nn.Module):
    """Returns its input as a channels-first view of channels-last storage (as ConvNeXt's
    stages do): not contiguous, but a view."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def test_score_layer_masks_a_strided_channels_first_view_in_place() -> None:
    class ChannelDrop(camkit.Method):
        """Weights: the score with each channel zeroed, one mask per channel."""

        name = "test-layout-channel-drop"

        def weights(self, ctx: camkit.Context) -> Tensor:
            b, c = ctx.activations.shape[:2]
            masks = 1 - torch.eye(c).expand(b, c, c)
            return ctx.score_layer(masks)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        Permuted(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    x = _inputs(2)
    result = camkit.Extractor(ChannelDrop(), model, "1")(x)
    with torch.no_grad():
        out = model(x)
        target = out.argmax(1)
        expected = torch.empty(2, 4)
        for k in range(4):
            feats = torch.relu(model[0](x))
            feats[:, k] = 0
            expected[:, k] = model[5](feats.mean((2, 3))).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(result.weights["1"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("option", "groups", "batch", "layout"),
    [
        (False, 4, 3, "nchw"),  # never, where it would be chosen
        (False, 1, 3, "nchw"),
        (True, 1, 1, "nhwc"),  # always, where it would not be
        (True, 4, 3, "nhwc"),
    ],
)
def test_the_channels_last_option(option: bool, groups: int, batch: int, layout: str) -> None:
    torch.manual_seed(0)
    model = Net(groups).eval()
    x = _inputs(batch)
    result = camkit.create("gradcam", model, "conv2", channels_last=option)(x)
    assert model.layouts == [layout]
    with torch.no_grad():
        torch.testing.assert_close(result.scores, model(x), rtol=1e-5, atol=1e-5)


def test_channels_last_true_still_falls_back_for_a_model_that_rejects_it() -> None:
    torch.manual_seed(0)
    model = Net(view=True).eval()
    extractor = camkit.create("cam", model, "conv2", channels_last=True)
    extractor(_inputs(1))
    extractor(_inputs(1))
    assert model.layouts == ["nhwc", "nchw", "nchw"]


@pytest.mark.parametrize(
    ("option", "layouts"), [(None, {"nchw", "nhwc"}), (False, {"nchw"}), (True, {"nhwc"})]
)
def test_the_option_applies_to_the_scoring_service(option: bool | None, layouts: set[str]) -> None:
    torch.manual_seed(0)
    model = Net().eval()
    # Batch 1 without grouped convolutions: the explained input goes as given by default,
    # the masked inputs channels-last.
    camkit.create("scorecam", model, "conv2", channels_last=option, batch_size=4)(_inputs(1))
    assert len(model.layouts) == 3 and set(model.layouts) == layouts


class _Ablation(camkit.Method):
    """Weights from ``ctx.score_layer``: each channel switched off in turn."""

    name = "test-layout-ablation"
    many_forwards = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        batch, channels = ctx.activations.shape[:2]
        keep = (1 - torch.eye(channels)).expand(batch, channels, channels)
        return ctx.baseline_scores[:, None] - ctx.score_layer(keep)


@pytest.mark.parametrize("method", ["smoothgradcampp", "scorecam", "ablation"])
def test_every_pass_falls_back_for_a_model_that_rejects_channels_last(method: str) -> None:
    """The services' one fallback serves every pass: the same maps as forwards as given, and
    after the first rejection nothing is laid out channels-last again."""
    x = _inputs(3)
    results = []
    for option in (None, False):
        torch.manual_seed(0)
        model = Net(view=True).eval()
        if method == "ablation":
            extractor = camkit.Extractor(
                _Ablation(), model, "conv2", options=camkit.RunOptions(channels_last=option)
            )
        else:
            options = {"num_samples": 3, "seed": 0} if method == "smoothgradcampp" else {}
            extractor = camkit.create(method, model, "conv2", channels_last=option, **options)
        results.append(extractor(x).maps)
        assert model.layouts.count("nhwc") == (1 if option is None else 0)
        assert "nhwc" not in model.layouts[1:]
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


# -- the measured layout (camkit.engine.accel.layout) ---------------------------------------


class Clock:
    """The probe's clock, advanced by the models below: their timing cannot depend on how busy
    the machine is."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class Slow(Net):
    """``Net`` whose forwards take ``delay`` seconds on the probe's clock on inputs of one
    layout (``"nhwc"`` or ``"nchw"``), 1 ms on the other, and record whether each ran under
    inference mode (the probe's do)."""

    def __init__(self, slow: str, delay: float = 0.01, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.slow, self.delay = slow, delay
        self.inference: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        self.inference.append(torch.is_inference_mode_enabled())
        CLOCK.now += self.delay if self.layouts[-1] == self.slow else 0.001
        return out


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MEASURE", True)
    monkeypatch.setattr(layout, "perf_counter", CLOCK)
    monkeypatch.delenv(hardware.ENV, raising=False)
    if not capabilities("cpu").channels_last:
        pytest.skip("this CPU has no channels-last convolutions to measure")


@pytest.mark.parametrize(("slow", "chosen"), [("nhwc", "nchw"), ("nchw", "nhwc")])
def test_the_faster_layout_is_measured_once_per_model_and_shape(measured, slow, chosen):
    torch.manual_seed(0)
    model = Slow(slow).eval()
    x = _inputs(3)
    first = camkit.create("gradcam", model, "conv2")(x)
    # The probe: one warm-up and two timed forwards in each layout, under inference mode,
    # before the explained forward (which records a graph).
    assert model.layouts == ["nchw", "nhwc"] * 3 + [chosen]
    assert model.inference == [True] * 6 + [False]
    # Another extractor on the same model and shape: no probe, the same layout.
    second = camkit.create("gradcam", model, "conv2")(x)
    assert model.layouts[7:] == [chosen]
    torch.testing.assert_close(first.maps, second.maps)
    # Another shape is measured again.
    camkit.create("cam", model, "conv2")(_inputs(2))
    assert len(model.layouts) == 8 + 7


def test_the_maps_do_not_depend_on_the_probe(measured):
    torch.manual_seed(0)
    probed = Slow("nchw").eval()
    torch.manual_seed(0)
    plain = Net().eval()
    x = _inputs(3)
    got = camkit.create("layercam", probed, "conv2")(x)
    layout.MEASURE = False
    expected = camkit.create("layercam", plain, "conv2", channels_last=False)(x)
    torch.testing.assert_close(got.maps, expected.maps, rtol=1e-5, atol=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in probed.modules())


def test_a_model_that_fails_channels_last_is_probed_as_given(measured):
    model = Net(view=True).eval()
    result = camkit.create("gradcam", model, "conv2")(_inputs(3))
    # The probe's channels-last warm-up failed: the answer is "as given", and the explained
    # forward runs so at once, without the failed attempt and its fallback.
    assert model.layouts == ["nchw", "nhwc", "nchw"]
    assert result.maps.shape == (3, 6, 6)


def test_train_mode_probes_leave_the_buffers(measured):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)
    )
    x = _inputs(3)
    model(x)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    camkit.create("gradcam", model, "2")(x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_an_override_naming_channels_last_pins_it(measured, monkeypatch):
    model = Slow("nhwc").eval()
    monkeypatch.setenv(hardware.ENV, "+channels_last")
    camkit.create("gradcam", model, "conv2")(_inputs(3))
    assert model.layouts == ["nhwc"]  # the capability's word, unmeasured
    monkeypatch.setenv(hardware.ENV, "-bf16")  # says nothing about the layout: measured
    camkit.create("gradcam", model, "conv2")(_inputs(2))
    assert model.layouts[1:] == ["nchw", "nhwc"] * 3 + ["nchw"]


def test_what_was_measured_goes_with_the_model(measured):
    model = Slow("nhwc", delay=0.0).eval()
    camkit.create("cam", model, "conv2")(_inputs(2))
    assert model in layout._decisions
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the decisions do not keep the model alive
