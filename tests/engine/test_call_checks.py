"""What one call computes only when needed, and how it names the cause of non-finite values.

A call runs the backward pass only when the method reads ``ctx.gradients``, and checks that
scores, activations, gradients and maps are finite in one go at the end; work that costs more
than the call (the scoring services) checks its inputs before it starts.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.capture import Capture
from camkit.errors import GradientError, InputError, LayerError, PluginError


class _Net(nn.Module):
    """conv -> (optional corruption) -> pool -> linear; ``corrupt`` edits the features."""

    def __init__(self, corrupt: Callable[[Tensor], Tensor] = lambda t: t) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.corrupt = corrupt

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.corrupt(self.features(x)).mean((2, 3)))


class _Corrupt(nn.Module):
    """A layer that puts ``value`` at one position of channel 1, and ``value`` there only."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, t: Tensor) -> Tensor:
        t = t.clone()
        t[:, 1, 0, 0] = self.value
        return t


def _x() -> Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _method(weights: Callable[[camkit.Context], Tensor], needs_gradients: bool) -> camkit.Method:
    cls = type(
        "Probe",
        (camkit.Method,),
        {
            "name": "probe",
            "needs_gradients": needs_gradients,
            "weights": lambda self, ctx: weights(ctx),
        },
    )
    return cls()


@pytest.fixture
def backward_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts backward passes to the captured layers (one entry per pass)."""
    calls: list[int] = []
    grad = Capture.grad

    def counting(self: Capture, total: Tensor) -> dict[str, Tensor]:
        calls.append(1)
        return grad(self, total)

    monkeypatch.setattr(Capture, "grad", counting)
    return calls


def test_no_backward_pass_unless_the_method_reads_gradients(backward_calls: list[int]) -> None:
    model = _Net()
    method = _method(lambda ctx: ctx.activations.mean((2, 3)), needs_gradients=True)
    camkit.Extractor(method, model, "features")(_x())
    assert backward_calls == []
    camkit.create("gradcam", model, "features")(_x())
    assert backward_calls == [1]


def test_smooth_gradcampp_skips_the_clean_backward_pass(backward_calls: list[int]) -> None:
    # Two noisy copies of two images in one chunk of four: one backward pass, none for the
    # clean input, whose gradients the method never reads.
    cam = camkit.create("smoothgradcampp", _Net(), "features", num_samples=2, batch_size=4, seed=0)
    cam(_x())
    assert backward_calls == [1]


def test_gradients_read_twice_come_from_one_backward_pass(backward_calls: list[int]) -> None:
    seen: list[Tensor] = []

    def weights(ctx: camkit.Context) -> Tensor:
        seen.extend([ctx.gradients, ctx.gradients])
        return ctx.gradients.mean((2, 3))

    camkit.Extractor(_method(weights, needs_gradients=True), _Net(), "features")(_x())
    assert backward_calls == [1]
    assert seen[0] is seen[1]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_features_are_named_even_when_relu_hides_them(value: float) -> None:
    # -inf in one channel with a positive weight gives -inf pixels, which the engine's ReLU
    # turns into zeros: the map would look finite, so the check cannot rely on the map alone.
    model = _Net()
    model.features = nn.Sequential(model.features, _Corrupt(value))
    method = _method(lambda ctx: torch.ones(ctx.activations.shape[:2]), needs_gradients=False)
    with pytest.raises(LayerError, match="output NaN or Inf values"):
        camkit.Extractor(method, model, "features")(_x())


def test_a_method_failing_on_non_finite_features_reports_the_features() -> None:
    model = _Net()
    model.features = nn.Sequential(model.features, _Corrupt(float("nan")))

    def weights(ctx: camkit.Context) -> Tensor:
        if not bool(torch.isfinite(ctx.activations).all()):
            raise RuntimeError("the algorithm failed to converge")
        return ctx.activations.mean((2, 3))

    method = _method(weights, needs_gradients=False)
    with pytest.raises(LayerError, match="output NaN or Inf values") as info:
        camkit.Extractor(method, model, "features")(_x())
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_failing_method_on_finite_features_raises_its_own_error() -> None:
    def weights(ctx: camkit.Context) -> Tensor:
        raise RuntimeError("a bug in the method")

    with pytest.raises(RuntimeError, match="a bug in the method"):
        camkit.Extractor(_method(weights, needs_gradients=False), _Net(), "features")(_x())


def test_scoring_checks_the_features_before_forwarding_masks() -> None:
    model = _Net()
    model.features = nn.Sequential(model.features, _Corrupt(float("nan")))
    forwards: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: forwards.append(args[0].shape[0]))
    try:
        with pytest.raises(LayerError, match="output NaN or Inf values"):
            camkit.create("scorecam", model, "features")(_x())
    finally:
        handle.remove()
    assert forwards == [2]  # the clean forward only


def test_non_finite_gradients_are_named_after_a_lazy_backward_pass() -> None:
    # sqrt of the features: infinite gradient where a feature is exactly zero.
    model = _Net()
    model.features = nn.Sequential(model.features, nn.ReLU())
    model.corrupt = torch.sqrt
    with pytest.raises(GradientError, match="NaN or Inf"):
        camkit.create("gradcam", model, "features")(_x())


def test_a_non_finite_map_from_finite_inputs_blames_the_method() -> None:
    method = _method(
        lambda ctx: torch.full(ctx.activations.shape[:2], float("inf")), needs_gradients=False
    )
    with pytest.raises(PluginError, match="'probe' produced non-finite values"):
        camkit.Extractor(method, _Net(), "features")(_x())


class _Cropping(_Net):
    """Looks at the top-left 4 x 4 pixels only."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x[:, :, :4, :4])


class _Asserting(_Net):
    """Refuses non-finite inputs with its own error, as some models do."""

    def forward(self, x: Tensor) -> Tensor:
        if not bool(torch.isfinite(x).all()):
            raise ValueError("bad pixels")
        return super().forward(x)


def _nan_at(row: int, col: int) -> Tensor:
    x = _x()
    x[1, 0, row, col] = float("nan")
    return x


@pytest.mark.parametrize("method", ["cam", "gradcam", "scorecam"])
def test_a_nan_the_model_reads_is_an_input_error(method: str) -> None:
    forwards: list[int] = []
    model = _Net()
    handle = model.register_forward_pre_hook(lambda _m, args: forwards.append(args[0].shape[0]))
    try:
        with pytest.raises(InputError, match="NaN or Inf"):
            camkit.create(method, model, "features")(_nan_at(2, 2))
    finally:
        handle.remove()
    assert forwards == [2]  # Score-CAM forwards no masked copy either


def test_a_nan_the_model_never_reads_does_not_stop_the_explanation() -> None:
    model = _Cropping()
    res = camkit.create("gradcam", model, "features")(_nan_at(7, 7))
    clean = camkit.create("gradcam", model, "features")(_x())
    torch.testing.assert_close(res.maps, clean.maps)


def test_a_model_failing_on_a_nan_input_gets_an_input_error() -> None:
    with pytest.raises(InputError, match="NaN or Inf") as info:
        camkit.create("gradcam", _Asserting(), "features")(_nan_at(2, 2))
    assert isinstance(info.value.__cause__, ValueError)


def test_a_model_failing_on_a_finite_input_raises_its_own_error() -> None:
    model = _Asserting()
    model.features.register_forward_hook(lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        camkit.create("gradcam", model, "features")(_x())
