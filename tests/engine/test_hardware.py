"""What the hardware probes find, the ``CAMKIT_CPU_CAPS`` override, and the precision each
capability leads to: every branch runs on any machine, forced through the override; tests
that need the real capability are skipped with its name where the CPU lacks it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import zoo
from camkit.engine import accel
from camkit.engine.accel import accelerator, capabilities, hardware, quantized
from camkit.engine.accel.rewrites import ConvActivation
from camkit.errors import ConfigError, PerformanceWarning

PROBED = capabilities()


def needs(name: str) -> pytest.MarkDecorator:
    """Skip unless this CPU has capability ``name`` (as ``CAMKIT_CPU_CAPS`` spells it)."""
    return pytest.mark.skipif(
        not getattr(PROBED, hardware.NAMES[name]),
        reason=f"needs CPU capability {name!r}; this CPU: {PROBED.summary()}",
    )


@pytest.fixture
def caps(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Set ``CAMKIT_CPU_CAPS`` for one test, and let the bf16 warning be issued again."""
    monkeypatch.setattr(accel, "_warned", set())

    def force(value: str) -> hardware.Capabilities:
        monkeypatch.setenv(hardware.ENV, value)
        return capabilities()

    return force


def test_the_override_turns_capabilities_off_and_on(caps) -> None:  # type: ignore[no-untyped-def]
    off = caps("-bf16, -fused_bf16")
    assert not off.bf16_native and not off.fused_bf16
    assert (off.fused_fp32, off.channels_last, off.int8) == (
        PROBED.fused_fp32,
        PROBED.channels_last,
        PROBED.int8,
    )
    assert off.overridden == "-bf16, -fused_bf16" and off.isa == PROBED.isa
    full = caps("fused_fp32,int8")
    assert [n for n, a in hardware.NAMES.items() if getattr(full, a)] == ["fused_fp32", "int8"]
    assert not any(getattr(caps("none"), a) for a in hardware.NAMES.values())
    assert caps("none,+bf16").bf16_native
    assert caps("") == hardware._probe("cpu") and not caps("").overridden  # as probed


def test_an_unknown_capability_is_a_config_error(caps) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"unknown capability 'fused_fp16'.*'fused_fp32'"):
        caps("-fused_fp16")


def test_capabilities_are_json_ready_and_summarized() -> None:
    data = json.loads(json.dumps(PROBED.as_dict()))
    assert data["device"] == "cpu" and set(hardware.NAMES.values()) <= set(data)
    assert PROBED.summary().startswith(f"cpu {PROBED.isa}: ")
    assert capabilities() is capabilities("cpu")  # probed once


def test_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16 amx_tile\n\nflags: other\n")
    assert hardware.cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16", "amx_tile"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\n")
    assert hardware.cpu_flags(str(arm)) & hardware.BF16_FLAGS == {"bf16"}


def test_a_onednn_isa_cap_below_bf16_means_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not hardware._onednn_may_use_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hardware._onednn_may_use_bf16()


@needs("fused_fp32")
def test_the_fused_float32_operator_computes_conv_then_activation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 7, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got = ConvActivation(conv, ("hardtanh", (-0.1, 0.2)))(x)
        expected = torch.clamp(
            nn.functional.conv2d(x, conv.weight, conv.bias, padding=1), -0.1, 0.2
        )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_failing_fused_operator_fails_its_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(self: nn.Module, x: Tensor) -> Tensor:
        raise RuntimeError("mkldnn_convolution: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(ConvActivation, "forward", missing)
    assert not hardware._fused_works(torch.float32)
    assert not hardware._fused_works(torch.bfloat16)


# -- precision on each kind of hardware ---------------------------------------------------------


def _shapes() -> tuple[nn.Module, Tensor]:
    images, _, _ = zoo.shapes.generate(2, seed=0)
    return zoo.load_model("shapes-cnn"), images


def _maps(model: nn.Module, x: Tensor, precision: str) -> Tensor:
    return camkit.create("scorecam", model, "features", progress=False, precision=precision)(x).maps


def _r(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


def test_bf16_without_native_units_warns_once_and_still_runs(caps) -> None:  # type: ignore[no-untyped-def]
    caps("-bf16,-fused_bf16")
    model, x = _shapes()
    with pytest.warns(PerformanceWarning, match=r"no native bfloat16.*precision=\"auto\""):
        fast = _maps(model, x, "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)  # once per process
        _maps(model, x, "bf16")
    assert min(_r(a, b) for a, b in zip(fast, _maps(model, x, "fp32"))) > 0.99


@needs("bf16")
def test_bf16_on_native_units_does_not_warn(caps) -> None:  # type: ignore[no-untyped-def]
    caps("")
    model, x = _shapes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        _maps(model, x, "bf16")


def _plan(model: nn.Module, x: Tensor, precision: str) -> accel.ForwardPlan:
    return accelerator(model, precision=precision, channels_last=None).scoring(x)


@needs("bf16")
def test_auto_is_bf16_where_native(caps) -> None:  # type: ignore[no-untyped-def]
    caps("")
    model, x = _shapes()
    assert _plan(model, x, "auto").mode == "bf16-copy"


@needs("int8")
def test_auto_without_bf16_runs_an_int8_copy_close_to_exact(caps) -> None:  # type: ignore[no-untyped-def]
    caps("-bf16,-fused_bf16")
    model, x = _shapes()
    plan = _plan(model, x, "auto")
    assert plan.mode == "int8-copy" and plan.dtype == torch.float32
    assert plan.model is _plan(model, x, "auto").model  # kept for the same model
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        auto = _maps(model, x, "auto")
    exact = _maps(model, x, "fp32")
    assert not torch.equal(auto, exact)  # int8 really ran
    assert min(_r(a, b) for a, b in zip(auto, exact)) > 0.99


def test_auto_without_bf16_or_int8_runs_the_float32_copy(caps) -> None:  # type: ignore[no-untyped-def]
    caps("-bf16,-fused_bf16,-int8")
    model, x = _shapes()
    assert _plan(model, x, "auto").mode == "fp32-copy"
    torch.testing.assert_close(
        _maps(model, x, "auto"), _maps(model, x, "fp32"), rtol=1e-4, atol=1e-5
    )


def test_an_int8_copy_whose_scores_stray_is_not_used(  # type: ignore[no-untyped-def]
    caps, monkeypatch: pytest.MonkeyPatch
) -> None:
    caps("-bf16,-fused_bf16,+int8")
    monkeypatch.setattr(quantized, "MIN_SCORE_R", 1.01)  # no copy can pass
    model, x = _shapes()
    assert _plan(model, x, "auto").mode == "fp32-copy"


def test_auto_runs_a_model_that_cannot_be_copied_as_it_is(caps) -> None:  # type: ignore[no-untyped-def]
    caps("-bf16")
    model, x = _shapes()
    model.train()
    plan = _plan(model, x, "auto")
    assert plan.mode == "model" and plan.model is model and not plan.autocast


@pytest.mark.parametrize(
    ("override", "precision", "mode"),
    [
        ("-bf16,-fused_bf16", "auto", "model"),  # no int8 or float32 copy either
        ("-bf16,-fused_bf16", "bf16", "bf16-autocast"),
        ("+bf16", "auto", "bf16-autocast"),
        ("", "fp32", "model"),
    ],
)
def test_a_hooked_pass_never_runs_a_copy(caps, override: str, precision: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Layer-masked scoring hooks the model's own layer: every plan calls the model itself."""
    caps(override)
    model, x = _shapes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        plan = accelerator(model, precision=precision).scoring(x, hooked=True)
    assert plan.mode == mode and plan.model is model and plan.dtype == x.dtype
    assert plan.autocast == (mode == "bf16-autocast")


def test_channels_last_follows_its_capability(caps) -> None:  # type: ignore[no-untyped-def]
    model, x = _shapes()
    caps("-channels_last")
    assert not _plan(model, x, "fp32").channels_last
    assert not accelerator(model).explain_channels_last(x)
    caps("+channels_last")
    assert _plan(model, x, "fp32").channels_last
    assert accelerator(model).explain_channels_last(x)  # batch 2, convolutions, CPU


def _counting_quantize(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    quantize = quantized._quantize

    def counting(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return quantize(*args)

    monkeypatch.setattr(quantized, "_quantize", counting)
    return calls


@needs("int8")
def test_the_int8_copy_is_checked_not_rebuilt_for_new_images(  # type: ignore[no-untyped-def]
    caps, monkeypatch: pytest.MonkeyPatch
) -> None:
    caps("-bf16")
    calls = _counting_quantize(monkeypatch)
    model, x = _shapes()
    first = _plan(model, x, "auto").model
    other, _, _ = zoo.shapes.generate(3, seed=5)
    assert _plan(model, other, "auto").model is first and calls == [1]


def test_a_model_whose_int8_copy_failed_is_not_calibrated_again(  # type: ignore[no-untyped-def]
    caps, monkeypatch: pytest.MonkeyPatch
) -> None:
    caps("-bf16,+int8")
    monkeypatch.setattr(quantized, "MIN_SCORE_R", 1.01)
    calls = _counting_quantize(monkeypatch)
    model, x = _shapes()
    other, _, _ = zoo.shapes.generate(3, seed=5)
    assert _plan(model, x, "auto").mode == "fp32-copy"
    assert _plan(model, other, "auto").mode == "fp32-copy"
    assert len(calls) <= 1  # none where this torch has no int8 engine
