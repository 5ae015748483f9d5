"""``precision="auto"`` builds a copy only where the work at hand wins its cost back.

The decision (:func:`gate.choose`) is tested with injected numbers; the paths through the
accelerator and the scoring service with injected seconds per row (or a fake clock), never
with timed assertions. The CPU is told it has no bfloat16 (``CAMKIT_CPU_CAPS``), as an
AVX2-only one, so that ``"auto"`` takes the int8 / float32-copy route on any machine.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import zoo
from camkit.engine import scoring
from camkit.engine.accel import accelerator, capabilities, gate, hardware, inference, quantized
from camkit.engine.accel.gate import Option, choose
from camkit.engine.services import Services

INT8 = pytest.mark.skipif(
    not capabilities().int8, reason=f"needs CPU capability 'int8'; {capabilities().summary()}"
)


@pytest.fixture(autouse=True)
def _avx2_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hardware.ENV, "-bf16,-fused_bf16")


def _shapes() -> tuple[nn.Module, Tensor]:
    images, _, _ = zoo.shapes.generate(2, seed=0)
    return zoo.load_model("shapes-cnn"), images


def _r(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


# -- the decision, with injected numbers ------------------------------------------------------

COPY = Option("fp32-copy", 0.1, 1.05)  # injected numbers, not the defaults
INT8_BUILD = Option("int8-copy", 1.5, 2.0)


def test_a_small_job_runs_the_model_a_large_one_pays_for_int8() -> None:
    # 64 rows of 10 ms: 0.64 s; int8 would save 0.32 s for 1.5 x 1.5 s: not worth it.
    assert choose(64, 0.01, [COPY, INT8_BUILD]) == "model"
    # 512 rows of 35 ms (ResNet-18 Score-CAM): 17.9 s; int8: 2.25 + 8.96 s.
    assert choose(512, 0.035, [COPY, INT8_BUILD]) == "int8-copy"


def test_the_break_even_is_margin_times_the_cost() -> None:
    # Saving rows x row_s x (1 - 1/2) = rows x 0.005 s against 1.5 x 1.5 s: 450 rows.
    assert choose(449, 0.01, [INT8_BUILD]) == "model"
    assert choose(451, 0.01, [INT8_BUILD]) == "int8-copy"
    assert choose(301, 0.01, [INT8_BUILD], margin=1.0) == "int8-copy"
    assert choose(299, 0.01, [INT8_BUILD], margin=1.0) == "model"


def test_what_is_built_already_is_used_for_any_job() -> None:
    built = [Option("fp32-copy", 0.0, 1.05), Option("int8-copy", 0.0, 2.0)]
    assert choose(1, 1e-6, built) == "int8-copy"
    assert choose(1, 1e-6, [Option("fp32-copy", 0.0, 1.05), INT8_BUILD]) == "fp32-copy"


def test_a_copy_no_faster_than_the_model_is_never_chosen_and_ties_go_to_the_model() -> None:
    assert choose(10**6, 1.0, [Option("fp32-copy", 0.0, 1.0)]) == "model"
    assert choose(10**6, 1.0, [Option("int8-copy", 0.0, 0.5)]) == "model"
    assert choose(0, 1.0, [Option("fp32-copy", 0.0, 2.0)]) == "model"


def test_a_calibration_costs_more_for_bigger_models_and_slower_rows() -> None:
    small = gate.calibration_seconds(20, 0.1, 9, 0.001)
    assert gate.calibration_seconds(200, 0.1, 9, 0.001) > small
    assert gate.calibration_seconds(20, 40.0, 9, 0.001) > small
    assert gate.calibration_seconds(20, 0.1, 9, 0.05) > small
    assert gate.trace_seconds(68, 45.0) > gate.trace_seconds(20, 0.1)


# -- through the accelerator -----------------------------------------------------------------


def test_a_small_job_builds_nothing() -> None:
    model, x = _shapes()
    plan = accelerator(model, precision="auto").scoring(x, rows=8, row_s=1e-4)
    assert plan.mode == "model" and plan.model is model and not plan.provisional
    assert model not in quantized._cache
    assert inference.copy_status(model, torch.float32) == "build"  # not traced either


@INT8
def test_a_large_job_calibrates_the_int8_copy() -> None:
    model, x = _shapes()
    plan = accelerator(model, precision="auto").scoring(x, rows=100_000, row_s=0.01)
    assert plan.mode == "int8-copy" and not plan.provisional
    assert quantized.int8_status(model, x)[0] == "ready"
    # Built now, it runs even a one-row job: nothing left to pay for.
    assert accelerator(model, precision="auto").scoring(x, rows=1).mode == "int8-copy"


def test_without_a_measured_row_time_the_plan_is_provisional_and_costs_nothing() -> None:
    model, x = _shapes()
    plan = accelerator(model, precision="auto").scoring(x, rows=100_000)
    assert plan.mode == "model" and plan.provisional
    assert model not in quantized._cache


def test_without_rows_auto_is_as_before_and_exact_modes_ignore_them() -> None:
    model, x = _shapes()
    assert accelerator(model, precision="fp32").scoring(x, rows=10**6, row_s=1.0).mode == "model"
    plan = accelerator(model, precision="auto").scoring(x)
    assert not plan.provisional and plan.mode in ("int8-copy", "fp32-copy")


# -- through the scoring service ---------------------------------------------------------------


def _seed_row_seconds(model: nn.Module, x: Tensor, row_s: float) -> None:
    """What an earlier call would have measured (rows=1: nothing is built)."""
    accelerator(model, precision="auto").scoring(x, rows=1, row_s=row_s)


def _scorecam(model: nn.Module, x: Tensor, precision: str, batch_size: int = 32) -> Tensor:
    extractor = camkit.create(
        "scorecam", model, "features", progress=False, precision=precision, batch_size=batch_size
    )
    return extractor(x).maps


def _sscam(model: nn.Module, x: Tensor, precision: str, batch_size: int = 32) -> Tensor:
    """SS-CAM, 4 noisy copies of each of the 48 masks: 192 forwards for one image, enough
    to win back a calibration on 9 rows (Score-CAM's 48 are not)."""
    extractor = camkit.create(
        "sscam",
        model,
        "features",
        progress=False,
        precision=precision,
        batch_size=batch_size,
        num_samples=4,
    )
    return extractor(x).maps


def test_score_cam_on_a_small_job_takes_the_cheap_path_and_is_exact() -> None:
    model, x = _shapes()
    _seed_row_seconds(model, x, 1e-6)  # cheap forwards: no copy can pay
    auto = _scorecam(model, x, "auto")
    assert model not in quantized._cache
    assert inference.copy_status(model, torch.float32) == "build"
    torch.testing.assert_close(auto, _scorecam(model, x, "fp32"))


@INT8
def test_score_cam_on_a_large_job_takes_the_int8_path_close_to_exact() -> None:
    model, x = _shapes()
    x = x[:1]
    _seed_row_seconds(model, x, 10.0)  # slow forwards: int8 pays on 192 masked inputs
    auto = _sscam(model, x, "auto")
    assert quantized.int8_status(model, x)[0] == "ready"
    exact = _sscam(model, x, "fp32")
    assert not torch.equal(auto, exact)  # int8 ran
    assert min(_r(a, b) for a, b in zip(auto, exact)) >= 0.99


@INT8
def test_the_first_chunk_times_the_forwards_and_the_rest_may_switch_to_int8(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No row time known: the first chunk runs the model, and with its time (a fake clock:
    10 s a chunk) the other chunks run the int8 copy."""
    clock = itertools.count(step=10.0)

    class _Clock:
        @staticmethod
        def perf_counter() -> float:
            return float(next(clock))

    monkeypatch.setattr(scoring, "time", _Clock)
    model, x = _shapes()
    x = x[:1]
    used: list[object] = []
    original = Services.run

    def spy(self, model_, batch, channels_last, restart=None):  # type: ignore[no-untyped-def]
        used.append(model_)
        return original(self, model_, batch, channels_last, restart)

    monkeypatch.setattr(Services, "run", spy)
    auto = _sscam(model, x, "auto", batch_size=16)
    monkeypatch.setattr(Services, "run", original)
    assert quantized.int8_status(model, x)[0] == "ready"
    kept = quantized._cache[model].kept
    first = used.index(kept)
    assert first >= 1 and used[first - 1] is model  # a chunk through the model, then int8
    assert all(m is kept for m in used[first:])
    exact = _sscam(model, x, "fp32")
    assert min(_r(a, b) for a, b in zip(auto, exact)) >= 0.99
