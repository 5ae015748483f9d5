"""Int8 inference copies for ``precision="auto"`` on CPUs without native bfloat16.

On an AVX2-only CPU, bfloat16 is emulated (6-10x slower than float32), but torch's x86
quantized engine runs int8 convolutions and linears with AVX2 (VNNI where present): a
ResNet-18 forward runs 2.4x faster than float32, MobileNetV3-Small 1.8x (docs/benchmarks.md).
The copy is made by post-training static quantization (torch's FX graph mode: per-channel
weights, per-tensor activations), calibrated on the explained images and on masked copies
of them, the inputs the scoring service then forwards. Its fidelity is checked before use:
the scores of masked copies of the images, through the copy and through the model, must
correlate (Pearson r, per class across the masked copies) at :data:`MIN_SCORE_R` or more;
otherwise the caller falls back to float32. A model whose scores do not vary across the
masked copies (e.g. an untrained one with vanishing outputs) cannot be checked and gets none.

torch's FX quantization is a prototype API (warnings silenced here); any failure (a model
that does not trace, an operator without an int8 kernel, another torch build) means no copy.
"""

from __future__ import annotations

import copy
import threading
import time
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.engine.accel.hardware import int8_engine
from camkit.engine.accel.inference import inference_copy

#: Least correlation of the copy's scores with the model's on masked copies of the images:
#: the r >= 0.99 asked of maps, asked of the scores they are made from (a stricter test:
#: Score-CAM's maps stayed at r >= 0.9999 where scores were at 0.99, docs/benchmarks.md).
MIN_SCORE_R = 0.99

#: Masked copies of each image used to calibrate and to check the copy.
MASKED_COPIES = 8
MASKED_IMAGES = 2

_lock = threading.Lock()


@dataclass
class Int8Entry:
    """What is known of one model's int8 copy: the float32 inference copy it was built
    against, the inputs last checked, the copy (None: it failed) and what it cost.

    ``prepare_s``: seconds the calibration took (tracing, observers, conversion, the check);
    ``check_s``: seconds of the check alone (the model and the copy on the samples);
    ``speedup``: the model's time over the copy's on those samples (0 where unmeasured).
    """

    reference: weakref.ref[nn.Module]
    key: tuple[object, ...]
    kept: nn.Module | None
    samples: int
    prepare_s: float = 0.0
    check_s: float = 0.0
    speedup: float = 0.0


_cache: weakref.WeakKeyDictionary[nn.Module, Int8Entry] = weakref.WeakKeyDictionary()


def samples_for(inputs: Tensor) -> int:
    """Rows the calibration and the check forward for ``(B, ...)`` ``inputs``."""
    return inputs.shape[0] + MASKED_COPIES * min(inputs.shape[0], MASKED_IMAGES)


def int8_status(model: nn.Module, inputs: Tensor) -> tuple[str, Int8Entry | None]:
    """What :func:`int8_copy` would do for ``model`` and ``inputs``, without doing it:
    ``"ready"`` (a copy checked on these inputs), ``"check"`` (a copy to check on them),
    ``"failed"`` (no copy: it failed, or int8 cannot serve here) or ``"build"`` (a
    calibration), with the model's entry where one is kept."""
    if int8_engine() is None or inputs.device.type != "cpu" or inputs.dim() != 4:
        return "failed", None
    with _lock:
        entry = _cache.get(model)
    if entry is None or entry.reference() is None:
        return "build", None
    if entry.reference() is not inference_copy(model, torch.float32, build=False):
        return "build", None  # the model changed since
    if entry.kept is None:
        return "failed", entry
    return ("ready" if entry.key == _key(inputs) else "check"), entry


def int8_copy(model: nn.Module, inputs: Tensor) -> nn.Module | None:
    """An int8 copy of ``model`` calibrated on ``(B, C, H, W)`` ``inputs``, or ``None`` when
    it cannot be built here or its scores would not follow the model's.

    The copy is kept while the model is unchanged (its float32 inference copy, which tracks
    changes, is the same) and checked again on each new ``inputs``; one that fails the check
    on new images is calibrated again on them, and a model whose copy failed is not tried
    again (until it changes), so that ``"auto"`` never pays for calibration in vain twice.
    What the calibration and the check cost is kept with the copy (:func:`int8_status`), for
    ``"auto"`` to judge whether they pay on the work at hand
    (:mod:`camkit.engine.accel.gate`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
        >>> _ = model(torch.rand(1, 3, 8, 8)); model = model.eval()
        >>> copied = int8_copy(model, torch.rand(2, 3, 8, 8))  # None where int8 cannot serve
    """
    engine = int8_engine()
    if engine is None or inputs.device.type != "cpu" or inputs.dim() != 4:
        return None
    reference = inference_copy(model, torch.float32)
    if reference is None:  # train mode, hooks, untraceable: the model runs as it is
        return None
    key = _key(inputs)
    with _lock:
        entry = _cache.get(model)
        if entry is not None and entry.reference() is reference:
            if entry.key == key or entry.kept is None:  # the same images, or int8 failed
                return entry.kept
            samples = _masked_copies(inputs.detach().float())
            if _follows(model, entry.kept, samples, entry):
                entry.key = key
                return entry.kept
        else:
            samples = _masked_copies(inputs.detach().float())
        started = time.perf_counter()
        entry = Int8Entry(weakref.ref(reference), key, None, samples.shape[0])
        entry.kept = _build(model, samples, engine, entry)
        entry.prepare_s = time.perf_counter() - started
        _cache[model] = entry
        return entry.kept


def _key(inputs: Tensor) -> tuple[object, ...]:
    return (inputs.data_ptr(), tuple(inputs.shape), float(inputs.sum()))


def _build(model: nn.Module, samples: Tensor, engine: str, entry: Int8Entry) -> nn.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copied = _quantize(model, samples, engine)
    except Exception:  # untraceable, unsupported operator, or no kernel in this build
        return None
    return copied if _follows(model, copied, samples, entry) else None


def _follows(model: nn.Module, copied: nn.Module, samples: Tensor, entry: Int8Entry) -> bool:
    """Whether the copy's scores on ``samples`` follow the model's (:data:`MIN_SCORE_R`);
    the two forwards' times are kept in ``entry``."""
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            expected = model(samples)
            middle = time.perf_counter()
            got = copied(samples)
            done = time.perf_counter()
    except Exception:  # an input the calibrated copy cannot take
        return False
    entry.check_s = done - started
    entry.speedup = (middle - started) / max(done - middle, 1e-9)
    if not isinstance(expected, Tensor) or not isinstance(got, Tensor):
        return False
    return expected.shape == got.shape and _score_r(expected, got) >= MIN_SCORE_R


def _quantize(model: nn.Module, samples: Tensor, engine: str) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        prepared = prepare_fx(
            copy.deepcopy(model), get_default_qconfig_mapping(engine), (samples[:1],)
        )
        with torch.inference_mode():
            prepared(samples)
        return convert_fx(prepared).eval()
    finally:
        torch.backends.quantized.engine = previous


def _masked_copies(inputs: Tensor) -> Tensor:
    """The images, and ``MASKED_COPIES`` copies of each of the first ``MASKED_IMAGES`` under
    smooth random masks (the kind of input Score-CAM forwards), channels-last."""
    gen = torch.Generator().manual_seed(0)
    some = inputs[:MASKED_IMAGES]
    batch, _, height, width = some.shape
    coarse = torch.rand(batch * MASKED_COPIES, 1, 7, 7, generator=gen)
    masks = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    masked = some.repeat_interleave(MASKED_COPIES, 0) * masks
    return torch.cat([inputs, masked]).contiguous(memory_format=torch.channels_last)


def _score_r(expected: Tensor, got: Tensor) -> float:
    """Pearson r of two ``(N, K)`` score tables after removing each class's mean over the
    rows: how well the copy follows the model's changes from one masked input to another."""
    a = (expected - expected.mean(0)).flatten().double()
    b = (got.float() - got.float().mean(0)).flatten().double()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0  # no variation: unchecked
