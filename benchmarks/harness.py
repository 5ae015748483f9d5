"""Measuring helpers of the benchmarks: timing, pass counting, fidelity, memory, the machine.

Everything here observes a run through public means (module hooks, the process's clock and
memory counters); nothing is patched.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from camkit.engine.accel import capabilities
from camkit.engine.accel.hardware import ENV
from camkit.engine.outputs import layer_tensor, scores_of

Fn = Callable[[], object]

#: Environment variables that change what the CPU kernels may use (recorded with the machine).
ISA_VARIABLES = (ENV, "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")


@dataclass
class Timing:
    """Seconds per run: wall clock and process CPU time."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


def interleaved(
    fns: dict[str, Fn], repeats: int, warmup: int, *, seconds: float = 0.0, most: int = 0
) -> dict[str, Timing]:
    """Time each function ``repeats`` times after ``warmup`` untimed runs, round-robin
    (alternating the order every round) so that load changes hit every function alike.

    With ``seconds``, short functions run more rounds: as many as fill about ``seconds``
    (judged by the last warm-up round), at most ``most``.
    """
    round_time = 0.0
    for _ in range(warmup):
        start = time.perf_counter()
        for fn in fns.values():
            fn()
        round_time = time.perf_counter() - start
    if seconds and round_time > 0:
        repeats = max(repeats, min(most, math.ceil(seconds / round_time)))
    timings = {name: Timing() for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            timings[name].cpu.append(time.process_time() - cpu)
            timings[name].wall.append(time.perf_counter() - wall)
    return timings


def forward_sizes(model: nn.Module, call: Fn) -> list[int]:
    """Batch sizes of the model's top-level forward passes during ``call()``."""
    sizes: list[int] = []

    def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            sizes.append(args[0].shape[0])

    handle = model.register_forward_pre_hook(record)
    try:
        call()
    finally:
        handle.remove()
    return sizes


def backward_count(model: nn.Module, call: Fn) -> int:
    """How many backward passes through ``model``'s output ``call()`` makes (a full backward
    pre-hook on the model fires once per pass)."""
    count = 0

    def record(_module: nn.Module, _grad_output: object) -> None:
        nonlocal count
        count += 1

    handle = model.register_full_backward_pre_hook(record)
    try:
        call()
    finally:
        handle.remove()
    return count


def bare_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The model's own cost for activation methods: one forward under inference mode."""
    with torch.inference_mode():
        return scores_of(model(x))


def forward_backward(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """The model's own cost for gradient methods: a forward, then the gradient of the top
    class score with respect to ``layer``'s output."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            out = scores_of(model(x))
            top = out.gather(1, out.argmax(1, keepdim=True)).sum()
            (grad,) = torch.autograd.grad(top, layer_tensor(captured[0], "layer"))
    finally:
        handle.remove()
    return grad


def rows_of(x: Tensor, n: int) -> Tensor:
    """``n`` rows made of copies of the batch ``x``."""
    return x.repeat(math.ceil(n / x.shape[0]), *([1] * (x.dim() - 1)))[:n].contiguous()


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two maps (flattened), in [-1, 1] (rounding clipped); 1.0 when
    both are constant and equal."""
    a, b = a.flatten().double(), b.flatten().double()
    da, db = a - a.mean(), b - b.mean()
    denom = float(da.norm() * db.norm())
    if denom == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return min(1.0, max(-1.0, float((da * db).sum()) / denom))


def top_overlap(a: Tensor, b: Tensor, fraction: float = 0.2) -> float:
    """Share of ``a``'s top ``fraction`` pixels that are also among ``b``'s top pixels."""
    a, b = a.flatten(), b.flatten()
    k = max(1, round(fraction * a.numel()))
    top_a = set(a.topk(k).indices.tolist())
    top_b = set(b.topk(k).indices.tolist())
    return len(top_a & top_b) / k


def peak_rss_during(fn: Fn) -> tuple[float, str]:
    """Rise of the peak resident set size over the resident size before ``fn()``, in MiB,
    and how it was measured.

    Garbage is collected before, and the collector paused during, ``fn()``: objects of
    earlier work freed in the middle (cyclic ones, such as traced modules) would lower the
    resident size under the measured call. Memory the C allocator keeps after earlier frees
    is handed back to the system first (glibc), so that the call cannot reuse resident
    pages unseen.
    """
    gc.collect()
    _trim_heap()
    paused = gc.isenabled()
    gc.disable()
    try:
        return _peak_rss_rise(fn)
    finally:
        if paused:
            gc.enable()


def _trim_heap() -> None:
    with contextlib.suppress(AttributeError, OSError):  # not glibc: nothing to hand back
        ctypes.CDLL(None).malloc_trim(0)


def _peak_rss_rise(fn: Fn) -> tuple[float, str]:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current resident size
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024, "VmHWM - VmRSS"
    except OSError:
        # Without /proc, only the lifetime peak is known: exact when the call sets it.
        before_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1024 * 1024 if sys.platform == "darwin" else 1024
        return (after_peak - before_peak) / scale, "ru_maxrss delta"


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")


def machine() -> dict[str, Any]:
    """The CPU, what camkit found it can do, and the software versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = capabilities()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "capabilities": caps.as_dict(),
        "capabilities_summary": caps.summary(),
        "environment": {k: os.environ[k] for k in ISA_VARIABLES if k in os.environ},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
