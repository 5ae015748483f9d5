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
import warnings
import weakref

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
# model -> (its float32 inference copy when built, the inputs last checked, int8 copy or None)
_cache: weakref.WeakKeyDictionary[
    nn.Module, tuple[weakref.ref[nn.Module], tuple[object, ...], nn.Module | None]
] = weakref.WeakKeyDictionary()


def int8_copy(model: nn.Module, inputs: Tensor) -> nn.Module | None:
    """An int8 copy of ``model`` calibrated on ``(B, C, H, W)`` ``inputs``, or ``None`` when
    it cannot be built here or its scores would not follow the model's.

    The copy is kept while the model is unchanged (its float32 inference copy, which tracks
    changes, is the same) and checked again on each new ``inputs``; one that fails the check
    on new images is calibrated again on them, and a model whose copy failed is not tried
    again (until it changes), so that ``"auto"`` never pays for calibration in vain twice.

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
    key = (inputs.data_ptr(), tuple(inputs.shape), float(inputs.sum()))
    with _lock:
        entry = _cache.get(model)
        if entry is not None and entry[0]() is reference:
            built_for, kept = entry[1], entry[2]
            if built_for == key or kept is None:  # the same images, or a model int8 failed
                return kept
            samples = _masked_copies(inputs.detach().float())
            if _follows(model, kept, samples):
                _cache[model] = (entry[0], key, kept)
                return kept
        else:
            samples = _masked_copies(inputs.detach().float())
        copied = _build(model, samples, engine)
        _cache[model] = (weakref.ref(reference), key, copied)
        return copied


def _build(model: nn.Module, samples: Tensor, engine: str) -> nn.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copied = _quantize(model, samples, engine)
    except Exception:  # untraceable, unsupported operator, or no kernel in this build
        return None
    return copied if _follows(model, copied, samples) else None


def _follows(model: nn.Module, copied: nn.Module, samples: Tensor) -> bool:
    """Whether the copy's scores on ``samples`` follow the model's (:data:`MIN_SCORE_R`)."""
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected, got = model(samples), copied(samples)
    except Exception:  # an input the calibrated copy cannot take
        return False
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
