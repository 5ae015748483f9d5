"""Whether a model's explained forward runs faster on a channels-last copy of its input,
measured on the model itself.

Whether channels-last pays depends on the CPU, the model and the input size, not on a flag:
on an AMD EPYC with AVX-512, ResNet-18's ``layer4`` (512 channels on a 4 x 4 grid) runs
3x slower in channels-last at 112 px, so the whole forward takes 1.4-1.6x as long at batch
2-4, while at 224 px, or at batch 64, channels-last is 15-30 % faster. So where the
accelerator's rule would choose channels-last, the first forward of a model on a given input
shape is timed both ways, on at most :data:`PROBE_ROWS` of the images, under inference mode:
one warm-up each (oneDNN builds its primitives and reorders the weights then), then the best
of two alternating runs each. Channels-last is kept only when it is at least
``1 - MARGIN`` faster. The answer is kept per model (weakly: it goes with the model) and input
shape, so later calls, and other extractors on the same model, do not measure again, and a
model is explained in one layout on every call (the maps of the two layouts differ in the
last float bits).

The probe runs the model outside camkit's hooks, inside the call's guards (buffers restored
in train mode). ``CAMKIT_CPU_CAPS`` naming ``channels_last`` (or a full list) pins the answer
to the capability without measuring, and so does :func:`by_rule` for what runs inside it:
experiments (``camkit run``) are explained by the rule, so that their outputs do not depend
on a timing (a resumed run, or each rank of a distributed one, lays the model out alike).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from time import perf_counter

import torch
from torch import Tensor, nn

#: At most this many images are forwarded by the probe (three times in each layout).
PROBE_ROWS = 4
#: Channels-last must take at most this fraction of the as-given time: the copy into
#: channels-last costs too, and a model that is about even should not flip on a noisy draw.
MARGIN = 0.9
#: Off in camkit's own test suite (the rule is pinned there, so that forward counts are
#: exact); tests of this module turn it on.
MEASURE = True

_ruled: ContextVar[bool] = ContextVar("camkit_layout_by_rule", default=False)

_Key = tuple[tuple[int, ...], torch.dtype, str]
_decisions: weakref.WeakKeyDictionary[nn.Module, dict[_Key, bool]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def measuring() -> bool:
    """Whether layouts are measured here (not in camkit's tests, nor inside :func:`by_rule`)."""
    return MEASURE and not _ruled.get()


@contextmanager
def by_rule() -> Iterator[None]:
    """Within this context (this thread), the accelerator's rule decides, unmeasured.

    Example:
        >>> with by_rule():
        ...     measuring()
        False
    """
    token = _ruled.set(True)
    try:
        yield
    finally:
        _ruled.reset(token)


def channels_last_faster(model: nn.Module, x: Tensor) -> bool:
    """Whether ``model`` runs ``x`` faster in channels-last (measured once per input shape).

    Example:
        >>> from torch import nn
        >>> channels_last_faster(nn.Conv2d(3, 4, 3).eval(), torch.rand(2, 3, 8, 8)) in (True, False)
        True
    """
    key = (tuple(x.shape), x.dtype, str(x.device))
    with _lock:
        known = _decisions.get(model, {}).get(key)
    if known is not None:
        return known
    decision = _measure(model, x)
    with _lock:
        _decisions.setdefault(model, {})[key] = decision
    return decision


def forget(model: nn.Module) -> None:
    """Drop what was measured for ``model`` (after its weights or structure changed)."""
    with _lock:
        _decisions.pop(model, None)


def _measure(model: nn.Module, x: Tensor) -> bool:
    rows = x[:PROBE_ROWS].detach()
    layouts = {
        "as given": rows.contiguous(),
        "channels-last": rows.contiguous(memory_format=torch.channels_last),
    }
    best = dict.fromkeys(layouts, math.inf)
    try:
        with torch.inference_mode():
            for batch in layouts.values():
                model(batch)
            for _ in range(2):
                for name, batch in layouts.items():
                    start = perf_counter()
                    model(batch)
                    best[name] = min(best[name], perf_counter() - start)
    except Exception:  # the explained forward reports (or falls back) itself
        return False
    return best["channels-last"] < MARGIN * best["as given"]
