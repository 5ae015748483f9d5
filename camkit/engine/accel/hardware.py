"""What this process's devices can do, probed once and cached.

Every fast path of the engine asks here instead of assuming a CPU feature. The probes are
cheap (the CPU's flags, one tiny operator call per fused-operator probe), run on first use.

The environment variable ``CAMKIT_CPU_CAPS`` overrides what is found on the CPU, so that
every branch can be exercised on any machine (tests, or a user working around a probe):

- ``CAMKIT_CPU_CAPS=-bf16,-fused_bf16``: turn these capabilities off, keep the rest as
  probed (``+name`` turns one on);
- ``CAMKIT_CPU_CAPS=fused_fp32,channels_last``: a full list: exactly these are on;
- ``CAMKIT_CPU_CAPS=none``: all off.

Names as in :data:`NAMES`. Turning one off is always safe; turning on one the CPU lacks is not.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from camkit.errors import ConfigError, did_you_mean

#: The environment variable that overrides the probed CPU capabilities.
ENV = "CAMKIT_CPU_CAPS"

#: Capability names, as ``CAMKIT_CPU_CAPS`` spells them, and the field each sets.
NAMES: dict[str, str] = {
    "bf16": "bf16_native",
    "fused_fp32": "fused_fp32",
    "fused_bf16": "fused_bf16",
    "channels_last": "channels_last",
    "int8": "int8",
}

#: CPU flags (Linux ``/proc/cpuinfo``) of instructions that run bfloat16 products natively:
#: x86 AMX and AVX512-BF16, AVX-NE-CONVERT (bf16 conversions oneDNN uses on AVX2-class
#: cores), and ARM's BF16 extension.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16", "avx_ne_convert", "bf16"})

#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) below which oneDNN does not use those
#: instructions even where the CPU has them.
_ISA_WITHOUT_BF16 = frozenset(
    {"sse41", "avx", "avx2", "avx2_vnni", "avx512_core", "avx512_core_vnni"}
)


@dataclass(frozen=True)
class Capabilities:
    """What one device can do.

    Attributes:
        device: the device type, ``"cpu"`` or ``"cuda"``.
        bf16_native: bfloat16 matrix products and convolutions run on native units (faster
            than float32), not emulated.
        fused_fp32: oneDNN runs an activation as a float32 convolution's post-op, and it
            computes what the two operators compute.
        fused_bf16: the same for bfloat16 convolutions (needs native bfloat16 support in
            oneDNN: it fails on AVX2-only CPUs).
        channels_last: convolutions run faster on channels-last inputs.
        int8: torch's x86 quantized engine (int8 convolutions and linears) is available.
        isa: the vector instruction set torch's CPU kernels use (e.g. ``"AVX2"``,
            ``"AVX512"``) or the CUDA compute capability (``"sm_80"``).
        flags: the bfloat16-related CPU flags found.
        overridden: the ``CAMKIT_CPU_CAPS`` value applied, or ``""``.
    """

    device: str
    bf16_native: bool
    fused_fp32: bool
    fused_bf16: bool
    channels_last: bool
    int8: bool
    isa: str = ""
    flags: tuple[str, ...] = ()
    overridden: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The capabilities as a JSON-ready dict.

        Example:
            >>> from camkit.engine.accel import capabilities
            >>> sorted(capabilities().as_dict())[:3]
            ['bf16_native', 'channels_last', 'device']
        """
        out = asdict(self)
        out["flags"] = list(self.flags)
        return out

    def summary(self) -> str:
        """One line: which capabilities are on, e.g. ``"cpu AVX2: fused_fp32, int8"``."""
        on = [name for name, attr in NAMES.items() if getattr(self, attr)]
        text = f"{self.device} {self.isa}: {', '.join(on) or 'none'}"
        return text + (f" ({ENV}={self.overridden})" if self.overridden else "")


def capabilities(device: str | torch.device = "cpu") -> Capabilities:
    """The capabilities of ``device`` (a device or device type), with ``CAMKIT_CPU_CAPS``
    applied on the CPU.

    Example:
        >>> from camkit.engine.accel import capabilities
        >>> caps = capabilities("cpu")
        >>> caps.fused_fp32 in (True, False)
        True
    """
    kind = torch.device(device).type
    return _with_override(kind, os.environ.get(ENV, "").strip() if kind == "cpu" else "")


@functools.cache
def _with_override(device: str, override: str) -> Capabilities:
    probed = _probe(device)
    if not override:
        return probed
    on = {name: bool(getattr(probed, attr)) for name, attr in NAMES.items()}
    items = [item.strip() for item in override.split(",") if item.strip()]
    if items != ["none"] and any(item[0] not in "+-" for item in items):
        on = dict.fromkeys(on, False)  # a full list: only what it names
    for item in items:
        if item == "none":
            on = dict.fromkeys(on, False)
            continue
        name = item.lstrip("+-")
        if name not in NAMES:
            raise ConfigError(
                f"{ENV}={override!r}: unknown capability {name!r}; known: "
                f"{', '.join(NAMES)} (as a list, or each with + or -)." + did_you_mean(name, NAMES)
            )
        on[name] = not item.startswith("-")
    fields: dict[str, Any] = {NAMES[name]: value for name, value in on.items()}
    return replace(probed, overridden=override, **fields)


@functools.cache
def _probe(device: str) -> Capabilities:
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
        # Ampere (sm_80) and later run bfloat16 on tensor cores; cuDNN's NHWC kernels are the
        # tensor-core ones from Volta (sm_70) on.
        return Capabilities(
            device, major >= 8, False, False, major >= 7, False, f"sm_{major}{minor}"
        )
    if device != "cpu":
        return Capabilities(device, False, False, False, False, False)
    flags = tuple(sorted(cpu_flags() & BF16_FLAGS))
    mkldnn = torch.backends.mkldnn.is_available()
    return Capabilities(
        device="cpu",
        bf16_native=bool(flags) and _onednn_may_use_bf16(),
        fused_fp32=mkldnn and _fused_works(torch.float32),
        fused_bf16=mkldnn and _fused_works(torch.bfloat16),
        channels_last=mkldnn,
        int8=int8_engine() is not None,
        isa=_cpu_isa(),
        flags=flags,
    )


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags, as Linux names them (x86 ``flags``, ARM ``Features``); where
    ``cpuinfo`` cannot be read, those torch's own checks find.

    Example:
        >>> "avx2" in cpu_flags() or True
        True
    """
    try:
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return _flags_from_torch()


def _flags_from_torch() -> set[str]:
    # Off Linux (macOS, Windows), torch's own CPU checks stand in for /proc/cpuinfo; they
    # are private, so any of them may be missing in another torch build.
    flags: set[str] = set()
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    for flag, check in checks.items():
        try:
            if getattr(torch._C._cpu, check)():
                flags.add(flag)
        except Exception:  # absent in this build
            pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        flags.add("bf16")  # Apple M2 and later; M1 lacks it, and the probe below decides
    return flags


def _onednn_may_use_bf16() -> bool:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    if cap.lower() in _ISA_WITHOUT_BF16:
        return False
    return os.environ.get("ATEN_CPU_CAPABILITY", "").lower() not in {"default", "avx2"}


def _cpu_isa() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # older torch
        return platform.machine()


def int8_engine() -> str | None:
    """torch's quantized engine for x86 CPUs (``"x86"``, else ``"fbgemm"``), if any."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


class _Clamp(nn.Hardtanh):
    def __init__(self) -> None:
        super().__init__(-0.5, 0.25)


def _fused_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolution runs in ``dtype`` in this build on this CPU and
    computes what the convolution followed by the activation computes."""
    from camkit.engine.accel.rewrites import POST_OPS, ConvActivation

    rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (0.05, 0.05)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    cases: list[tuple[type[nn.Module], tuple[str, tuple[float, ...]]]] = [*POST_OPS.items()]
    cases.append((_Clamp, ("hardtanh", (-0.5, 0.25))))
    try:
        for groups in (1, 4):
            conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=groups)
            for kind, post_op in cases:
                with torch.no_grad():
                    expected = kind()(conv(x))
                    low = conv.to(dtype)
                    got = ConvActivation(low, post_op)(x.to(dtype))
                conv.float()
                close = torch.allclose(got.float(), expected, rtol=rtol, atol=atol)
                if got.dtype != dtype or not close:
                    return False
    except Exception:  # the operator is missing, has another signature, or needs an ISA
        return False
    return True
