"""Whether ``precision="auto"``'s one-off preparations pay for themselves on the work at hand.

A faster copy of the model costs something once: the float32 or bfloat16 inference copy a
trace (tens of milliseconds, about 0.1 s for ResNet-18's 45 MB of weights), the int8 copy a
calibration (0.1 s for a small CNN to 1.5 s for ResNet-18 on one AVX2 thread) and, on each
new batch of images, a check. The scoring service says how many forwards it is about to run
(``rows``); the copy is made only when the forwards it speeds up win its cost back:

    estimated time of an option = MARGIN x its one-off seconds + rows x row_s / its speed-up

and the option with the least wins, the model as given (no cost, speed-up 1) among them, so
that ``"auto"`` is not slower than ``"fp32"`` on a small job. ``row_s``, one forward's
seconds per row, is what the caller measured on its first chunk, run through what was
already built (a forward at the chunk's own batch size: a probe at a smaller one misleads,
e.g. ResNet-18 at 64 x 64 pixels costs 5-20x more per row at batch 2 than at 32), and is
kept per model and input shape, so later calls decide before their first chunk. One-off
costs are estimated from the model's size until measured: an int8 copy's calibration,
check and speed-up are timed when it is built (:class:`quantized.Int8Entry`). The constants
were measured on one thread of an AMD EPYC capped to AVX2 (docs/benchmarks.md).

:func:`choose` is the decision, pure, to be tested with any numbers.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camkit.engine.accel.inference import copy_status
from camkit.engine.accel.quantized import int8_status, samples_for

#: Weight of an option's one-off seconds against the seconds it saves: estimates err, and a
#: preparation that only breaks even is not worth its risk.
MARGIN = 1.5

#: Speed-ups over the model as given assumed until measured: the float32 copy (ResNet-18
#: 1.07x to 1.19x, MobileNetV3-Small 1.7x to 2x: the more batch norms and activations per
#: convolution, the more), the int8 copy (ResNet-18 2.4x, MobileNetV3-Small 1.8x on AVX2),
#: the bfloat16 copy where bfloat16 is native (2.1x to 4x).
COPY_SPEEDUP = 1.2
INT8_SPEEDUP = 1.8
BF16_SPEEDUP = 2.0

#: One-off cost of a traced copy per module and per MB of weights (deep copy, folding).
TRACE_S_PER_MODULE = 0.3e-3
TRACE_S_PER_MB = 2.5e-3
#: The int8 calibration's fixed cost per module and per MB (observers, conversion), and its
#: forwards per calibration row (the observed forward, then the model and the copy).
QUANTIZE_S_PER_MODULE = 3e-3
QUANTIZE_S_PER_MB = 4e-3
CALIBRATION_FORWARDS = 3.0


@dataclass(frozen=True)
class Option:
    """A way to run the forwards: its name, one-off seconds, speed-up over the model."""

    name: str
    prepare_s: float
    speedup: float


def choose(rows: int, row_s: float, options: Sequence[Option], margin: float = MARGIN) -> str:
    """The option of least estimated time for ``rows`` forwards of ``row_s`` seconds each:
    ``margin x prepare_s + rows x row_s / speedup``; ``"model"`` (nothing to prepare,
    speed-up 1) competes, and a tie goes to the earlier (the model first).

    Example:
        >>> choose(10, 0.01, [Option("int8-copy", 2.0, 2.0)])
        'model'
        >>> choose(1000, 0.03, [Option("int8-copy", 2.0, 2.0)])
        'int8-copy'
    """
    best, best_s = "model", rows * row_s
    for option in options:
        total = margin * option.prepare_s + rows * row_s / max(option.speedup, 1e-9)
        if total < best_s:
            best, best_s = option.name, total
    return best


def trace_seconds(modules: int, megabytes: float) -> float:
    """Estimated seconds to build an inference copy of a model of this size."""
    return TRACE_S_PER_MODULE * modules + TRACE_S_PER_MB * megabytes


def calibration_seconds(modules: int, megabytes: float, samples: int, row_s: float) -> float:
    """Estimated seconds of an int8 calibration on ``samples`` rows (the copy it needs as its
    reference not included)."""
    fixed = QUANTIZE_S_PER_MODULE * modules + QUANTIZE_S_PER_MB * megabytes
    return fixed + CALIBRATION_FORWARDS * samples * row_s


def auto_choice(
    model: nn.Module, inputs: Tensor, rows: int, row_s: float | None, *, layout: bool
) -> tuple[str, bool]:
    """What ``"auto"`` runs ``rows`` float32 forwards of ``inputs``'s kind through on a CPU
    without native bfloat16: ``"model"``, ``"fp32-copy"`` or ``"int8-copy"``, and whether the
    choice is provisional: ``row_s`` (seconds per row) is neither given nor known from an
    earlier call, so the choice is the best of what is already built, and the caller should
    ask again, with the time of its first chunk, before the rest."""
    status = copy_status(model, torch.float32)
    if status == "none":
        return "model", False
    int8, entry = int8_status(model, inputs)
    ready = "int8-copy" if int8 == "ready" else "fp32-copy" if status == "ready" else "model"
    if status == "ready" and int8 in ("ready", "failed"):
        return ready, False  # nothing to pay for
    key = _key(inputs, layout)
    if row_s is None:
        with _lock:
            row_s = _row_seconds.get(model, {}).get(key)
        if row_s is None:
            return ready, True
    else:
        with _lock:
            _row_seconds.setdefault(model, {})[key] = row_s
    modules = sum(1 for _ in model.modules())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    trace = trace_seconds(modules, megabytes) if status == "build" else 0.0
    options = [Option("fp32-copy", trace, COPY_SPEEDUP)]
    speedup = entry.speedup if entry is not None and entry.speedup > 1 else INT8_SPEEDUP
    if int8 == "ready":
        options.append(Option("int8-copy", 0.0, speedup))
    elif int8 == "check":
        check = entry.check_s if entry is not None else 0.0
        check = check or (1 + 1 / speedup) * samples_for(inputs) * row_s
        options.append(Option("int8-copy", check, speedup))
    elif int8 == "build":
        calibration = calibration_seconds(modules, megabytes, samples_for(inputs), row_s)
        options.append(Option("int8-copy", trace + calibration, speedup))
    return choose(rows, row_s, options), False


_lock = threading.Lock()
# model -> {(input shape, dtype, device, layout): seconds per row of the model's forward}
_row_seconds: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], float]] = (
    weakref.WeakKeyDictionary()
)


def _key(inputs: Tensor, layout: bool) -> tuple[object, ...]:
    return (tuple(inputs.shape[1:]), inputs.dtype, inputs.device, layout)
