"""Benchmarks: what camkit costs next to the model's own cost, measured in the same run.

``python -m camkit.bench`` (or ``nox -s bench``) times every registered method on
``weights=None`` torchvision models and prints Markdown tables (``--output`` writes JSON,
``--markdown`` the tables). Each number is a median over repeated runs after warm-up, and
each ratio divides two medians whose runs were interleaved, so a machine that slows down
during the run slows both sides alike.

What a method is compared with (its *baseline*):

- activation methods: the bare forward passes the call makes, under inference mode;
- gradient methods: the same forward passes, each with a backward pass to the target layer;
- the Score family (methods whose config has ``precision``): ``B x C x N`` bare forward
  passes in chunks of the method's ``batch_size``, for ``B`` images (1 by default), ``C``
  the layer's channels and ``N`` the method's ``num_samples`` (1 without one) — the
  physical limit of the exact method on the model as given. Also reported: the ``bf16``
  mode's speed-up and its map fidelity against exact mode, peak memory, and the per-image
  cost of channels-last forwards (what the scorer runs) at several chunk sizes.

Peak memory is the rise of the process's peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) over its resident size just before one call, measured in a fresh
subprocess per number so that no memory freed by earlier work is reused unseen. It counts
everything the call touches: the model's activations, camkit's buffers, allocator slack.
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import importlib
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from camkit.engine.accel import inference_copy
from camkit.engine.layers import resolve
from camkit.engine.outputs import layer_tensor, scores_of, to_channels_first

Fn = Callable[[], object]


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build it, its target layer, input size, config overrides."""

    build: Callable[[], nn.Module]
    layer: str
    size: int
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        model: nn.Module = getattr(torchvision.models, name)(weights=None)
        return model

    return build


def _tiny() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3, stride=2, padding=1),
            relu2=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(16, 10),
        )
    )


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(_torchvision("resnet18"), "layer4", 224),
    # CAM needs the classifier that reads the layer's 576 channels (the first of two).
    "mobilenet_v3_small": ModelSpec(
        _torchvision("mobilenet_v3_small"),
        "features[-1]",
        224,
        {"cam": {"fc_layer": "classifier.0"}},
    ),
    "tiny": ModelSpec(_tiny, "relu2", 32),
}


#: ``num_samples`` of methods that have one, unless ``--num-samples`` is given: 1 keeps the run
#: short, but IS-CAM's first integration step is the all-zero input, so it needs two.
SAMPLES: dict[str, int] = {"iscam": 2}

#: Short latency runs repeat until they fill about this many seconds, up to MOST_REPEATS
#: rounds: at batch 1 a single run's noise is a few percent.
LATENCY_SECONDS = 1.0
MOST_REPEATS = 60


# -- measuring ------------------------------------------------------------------------------


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


def backward_count(call: Fn) -> int:
    """How many backward passes (``torch.autograd.grad`` calls) ``call()`` makes."""
    count = 0
    grad = torch.autograd.grad

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return grad(*args, **kwargs)

    torch.autograd.grad = counting
    try:
        call()
    finally:
        torch.autograd.grad = grad
    return count


def noise_draws(name: str, config: dict[str, Any], x: Tensor) -> Fn | None:
    """For a gradient method that averages over noisy inputs (a ``std`` and ``num_samples``
    in its config), drawing its ``num_samples`` input-sized Gaussian tensors: work the method
    is defined by, counted with the model's cost."""
    fields = camkit.method_info(name).config.model_fields
    if method_kind(name) != "gradient" or not {"std", "num_samples"} <= set(fields):
        return None
    n = int(config.get("num_samples", fields["num_samples"].default))
    gen = torch.Generator(device=x.device).manual_seed(0)
    return lambda: torch.randn((n, *x.shape), generator=gen, device=x.device, dtype=x.dtype)


def rows_of(x: Tensor, n: int) -> Tensor:
    """``n`` rows made of copies of the batch ``x``."""
    return x.repeat(math.ceil(n / x.shape[0]), *([1] * (x.dim() - 1)))[:n].contiguous()


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two maps (flattened); 1.0 when both are constant and equal."""
    a, b = a.flatten().double(), b.flatten().double()
    da, db = a - a.mean(), b - b.mean()
    denom = float(da.norm() * db.norm())
    if denom == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float((da * db).sum()) / denom


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
    resident size under the measured call.
    """
    gc.collect()
    paused = gc.isenabled()
    gc.disable()
    try:
        return _peak_rss_rise(fn)
    finally:
        if paused:
            gc.enable()


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


# -- what is measured -----------------------------------------------------------------------


def method_kind(name: str) -> str:
    """``"perturbation"`` (config has ``precision``), ``"gradient"`` or ``"activation"``."""
    info = camkit.method_info(name)
    if "precision" in info.config.model_fields:
        return "perturbation"
    return "gradient" if info.needs_gradients else "activation"


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name].build().eval()


def make_input(model_name: str, batch: int) -> Tensor:
    gen = torch.Generator().manual_seed(1)
    size = MODELS[model_name].size
    return torch.randn(batch, 3, size, size, generator=gen)


def method_config(name: str, model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    config = dict(MODELS[model_name].configs.get(name, {}))
    fields = camkit.method_info(name).config.model_fields
    if "num_samples" in fields:
        config["num_samples"] = args.num_samples or SAMPLES.get(name, 1)
    if method_kind(name) == "perturbation" and args.score_batch_size is not None:
        config["batch_size"] = args.score_batch_size
    return config


def bench_latency(
    name: str,
    model_name: str,
    model: nn.Module,
    batch: int,
    args: argparse.Namespace,
    *,
    repeats: int,
    warmup: int,
) -> dict[str, Any]:
    """An activation or gradient method against the bare forward (and backward) passes."""
    spec = MODELS[model_name]
    kind = method_kind(name)
    x = make_input(model_name, batch)
    config = method_config(name, model_name, args)
    extractor = camkit.create(name, model, spec.layer, progress=False, **config)
    layer = resolve(model, spec.layer)[1]
    backwards = backward_count(lambda: extractor(x))
    sizes = forward_sizes(model, lambda: extractor(x))
    inputs = [rows_of(x, n) for n in sizes]
    # The backward passes belong to the last forwards (a method that never reads the clean
    # input's gradients, like Smooth Grad-CAM++, makes none for the first).
    with_backward = [i >= len(sizes) - backwards for i in range(len(sizes))]
    noise = noise_draws(name, config, x)

    # The same passes with the input laid out as camkit's forward lays it out (channels-last
    # where that is faster): camkit's own cost, apart from what the layout saves.
    laid_out = list(inputs)
    if laid_out and extractor._accel.explain_channels_last(laid_out[0]):
        laid_out[0] = laid_out[0].contiguous(memory_format=torch.channels_last)

    def passes(rows_list: list[Tensor]) -> Fn:
        def run() -> None:
            for rows, backward in zip(rows_list, with_backward):
                if backward:
                    forward_backward(model, layer, rows)
                else:
                    bare_forward(model, rows)
            if noise is not None:
                noise()

        return run

    fns = {"camkit": lambda: extractor(x), "model": passes(inputs)}
    if laid_out and laid_out[0] is not inputs[0]:
        fns["layout"] = passes(laid_out)
    t = interleaved(fns, repeats, warmup, seconds=LATENCY_SECONDS, most=MOST_REPEATS)
    ms, base = t["camkit"].median * 1e3, t["model"].median * 1e3
    same = t["layout"].median * 1e3 if "layout" in t else base
    return {
        "method": name,
        "kind": kind,
        "model": model_name,
        "batch": batch,
        "forwards": len(sizes),
        "backwards": backwards,
        "noise": noise is not None,
        "camkit_ms": ms,
        "model_ms": base,
        "ratio": ms / base,
        "channels_last": "layout" in t,
        "layout_model_ms": same,
        "layout_ratio": ms / same,
        "cpu_ratio": t["camkit"].cpu_median / t["model"].cpu_median,
        "images_per_s": batch / t["camkit"].median,
        "model_images_per_s": batch / t["model"].median,
        "runs": len(t["camkit"].wall),
    }


def layer_channels(model: nn.Module, layer: nn.Module, x: Tensor) -> int:
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        bare_forward(model, x)
    finally:
        handle.remove()
    return to_channels_first(layer_tensor(captured[0], "layer"), input_size=x.shape[2:]).shape[1]


def bench_perturbation(
    name: str,
    model_name: str,
    model: nn.Module,
    batch: int,
    args: argparse.Namespace,
    *,
    chunk_peaks: dict[tuple[str, int], float | None],
) -> dict[str, Any]:
    """A Score-family method, exact and bf16, against ``C x N`` bare forwards."""
    spec = MODELS[model_name]
    x = make_input(model_name, batch)
    config = method_config(name, model_name, args)
    exact = camkit.create(name, model, spec.layer, progress=False, **config, precision="fp32")
    fast = camkit.create(name, model, spec.layer, progress=False, **config, precision="bf16")
    settings = exact.method.config
    chunk = int(settings.batch_size)
    samples = int(getattr(settings, "num_samples", 1))
    channels = layer_channels(model, resolve(model, spec.layer)[1], x)
    nominal = batch * channels * samples
    full = rows_of(x, chunk)
    last = rows_of(x, nominal % chunk) if nominal % chunk else None
    full_cl = full.contiguous(memory_format=torch.channels_last)
    # Warm-up: one forward of each shape, layout and precision the runs use.
    bare_forward(model, x)
    bare_forward(model, full)
    bare_forward(model, full_cl)
    _bf16_forward(model, full_cl)

    def limit() -> None:
        for _ in range(nominal // chunk):
            bare_forward(model, full)
        if last is not None:
            bare_forward(model, last)

    results: dict[str, Any] = {}

    def run_exact() -> None:
        results["sizes"] = forward_sizes(model, lambda: results.update(exact=exact(x)))

    fns: dict[str, Fn] = {
        "limit": limit,
        "exact": run_exact,
        "bf16": lambda: results.update(bf16=fast(x)),
    }
    t = interleaved(fns, args.score_repeats, warmup=0)
    pairs = list(zip(results["exact"].maps, results["bf16"].maps))
    row: dict[str, Any] = {
        "method": name,
        "model": model_name,
        "batch": batch,
        "channels": channels,
        "samples": samples,
        "batch_size": chunk,
        "nominal_forwards": nominal,
        # Rows the scorer forwarded, less the clean forward that captured the activations.
        "forwarded": sum(results["sizes"]) - batch,
        "exact_s": t["exact"].median,
        "limit_s": t["limit"].median,
        "ratio": t["exact"].median / t["limit"].median,
        "cpu_ratio": t["exact"].cpu_median / t["limit"].cpu_median,
        "bf16_s": t["bf16"].median,
        "bf16_speedup": t["exact"].median / t["bf16"].median,
        "pearson": statistics.mean(pearson(a, b) for a, b in pairs),
        "top20_overlap": statistics.mean(top_overlap(a, b) for a, b in pairs),
        "runs": args.score_repeats,
    }
    if not args.no_memory:
        probe = {"model": model_name, "batch": batch, "method": name, "config": config}
        row["peak_mib"] = _probe_in_subprocess({**probe, "precision": "fp32"}, args)
        key = (model_name, chunk)
        if key not in chunk_peaks:
            chunk_peaks[key] = _probe_in_subprocess({**probe, "method": None, "rows": chunk}, args)
        row["forwards_peak_mib"] = chunk_peaks[key]
    return row


def bench_chunk_sizes(
    model_name: str, model: nn.Module, sizes: Sequence[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Per-image cost of one channels-last forward at each chunk size, fp32 and bf16."""
    x = make_input(model_name, 1)
    fns: dict[str, Fn] = {}
    for size in sizes:
        rows = rows_of(x, size).contiguous(memory_format=torch.channels_last)
        fns[f"fp32/{size}"] = _bound(bare_forward, model, rows)
        fns[f"bf16/{size}"] = _bound(_bf16_forward, model, rows)
    t = interleaved(fns, args.score_repeats, warmup=1)
    return [
        {
            "model": model_name,
            "batch_size": size,
            "fp32_ms_per_image": t[f"fp32/{size}"].median * 1e3 / size,
            "bf16_ms_per_image": t[f"bf16/{size}"].median * 1e3 / size,
        }
        for size in sizes
    ]


def _bound(fn: Callable[[nn.Module, Tensor], Tensor], model: nn.Module, x: Tensor) -> Fn:
    return lambda: fn(model, x)


def _bf16_forward(model: nn.Module, x: Tensor) -> Tensor:
    """A forward as ``precision="bf16"`` runs it: through the bfloat16 inference copy, or
    under autocast for a model that cannot be copied."""
    copied = inference_copy(model, torch.bfloat16)
    if copied is None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return bare_forward(model, x)
    return bare_forward(copied, x.to(torch.bfloat16))


# -- memory probes (run in a fresh process) -------------------------------------------------


def probe_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one call of ``spec["method"]`` on a model built in this process or, when
    it is ``None``, of bare forwards of ``spec["rows"]`` channels-last images, as the scorer
    forwards them: four, as the peak stops growing after the second (the allocator does not
    reuse all of the first forward's memory)."""
    model_name = spec["model"]
    model = build_model(model_name)
    x = make_input(model_name, spec["batch"])
    config = dict(spec["config"])
    if spec["method"] is None:
        chunk = rows_of(x, spec["rows"]).contiguous(memory_format=torch.channels_last)
        peak, how = peak_rss_during(lambda: [bare_forward(model, chunk) for _ in range(4)])
    else:
        extractor = camkit.create(
            spec["method"],
            model,
            MODELS[model_name].layer,
            progress=False,
            precision=spec["precision"],
            **config,
        )
        peak, how = peak_rss_during(lambda: extractor(x))
    return {"peak_mib": peak, "how": how}


def _probe_in_subprocess(spec: dict[str, Any], args: argparse.Namespace) -> float | None:
    command = [sys.executable, "-m", "camkit.bench", "--probe-memory", json.dumps(spec)]
    for plugin in args.plugin:
        command += ["--plugin", plugin]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _log(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])


# -- the run --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_hardware": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def select_methods(patterns: Sequence[str] | None) -> list[str]:
    names = camkit.list_methods()
    if not patterns:
        return names
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if missing:
        raise SystemExit(f"no method matches {missing}; available: {', '.join(names)}")
    return chosen


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every selected measurement and return the results."""
    methods = select_methods(args.methods)
    report: dict[str, Any] = {
        "machine": machine(),
        "load_before": _loadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "probe_memory"},
        "latency": [],
        "throughput": [],
        "score": [],
        "chunk_sizes": [],
        "skipped": [],
    }
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    for model_name in args.models:
        model = build_model(model_name)
        chunk_peaks: dict[tuple[str, int], float | None] = {}
        for name in methods:
            kind = method_kind(name)
            runs: list[tuple[str, int]]
            if kind == "perturbation":
                runs = [("score", batch) for batch in args.score_batch_sizes]
            else:
                runs = [("latency", batch) for batch in args.batch_sizes]
                if (
                    args.throughput_batch
                    and model_name in args.throughput_models
                    and any(fnmatch.fnmatchcase(name, p) for p in args.throughput_methods)
                ):
                    runs.append(("throughput", args.throughput_batch))
            for section, batch in runs:
                _log(f"{name} on {model_name}, batch {batch}")
                try:
                    if section == "score":
                        row = bench_perturbation(
                            name,
                            model_name,
                            model,
                            batch,
                            args,
                            chunk_peaks=chunk_peaks,
                        )
                    elif section == "latency":
                        row = bench_latency(
                            name,
                            model_name,
                            model,
                            batch,
                            args,
                            repeats=args.repeats,
                            warmup=args.warmup,
                        )
                    else:
                        row = bench_latency(
                            name,
                            model_name,
                            model,
                            batch,
                            args,
                            repeats=args.throughput_repeats,
                            warmup=1,
                        )
                except camkit.errors.CamkitError as exc:
                    report["skipped"].append(
                        {"method": name, "model": model_name, "batch": batch, "reason": str(exc)}
                    )
                else:
                    report[section].append(row)
        if args.chunk_sizes:
            _log(f"chunk sizes on {model_name}")
            report["chunk_sizes"] += bench_chunk_sizes(model_name, model, args.chunk_sizes, args)
    report["seconds"] = time.perf_counter() - started
    # CPU seconds of this process and its memory probes: under load, wall time stretches but
    # CPU time barely does, so this divided by the threads estimates a quiet run's length.
    report["cpu_seconds"] = _cpu_seconds() - cpu_started
    report["load_after"] = _loadavg()
    return report


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# -- output ---------------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    m = report["machine"]
    s = report["settings"]
    lines = [
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads; "
        f"bfloat16 instructions: {', '.join(m['bf16_hardware']) or 'none found'}",
        f"- torch {m['torch']}, Python {m['python']}, {m['platform']}",
        f"- load average (1, 5, 15 min) before: {report['load_before']}, "
        f"after: {report['load_after']}; total {report['seconds']:.0f} s "
        f"({report['cpu_seconds']:.0f} CPU s)",
        "",
    ]
    if report["latency"]:
        lines += [
            "## Activation and gradient methods",
            "",
            f"Median of {s['repeats']} runs or more (as many as fill about "
            f"{LATENCY_SECONDS:.0f} s, at most {MOST_REPEATS}) after {s['warmup']} warm-up "
            "runs; camkit and the "
            "bare model interleaved. The model's cost is its forward passes (activation "
            "methods) or forward + backward to the layer (gradient methods; a forward whose "
            "gradients the method never reads gets no backward), plus, for Smooth Grad-CAM++, "
            "drawing its Gaussian noise. camkit's forward gets a channels-last copy of the "
            "input where torch's CPU convolutions run that faster (layout nhwc): "
            "same-layout ratio is camkit against the model's passes with the input laid out "
            "that way, i.e. camkit's own cost apart from what the layout saves.",
            "",
            "| method | model | batch | layout | camkit ms | model ms | ratio | CPU-time ratio "
            "| same-layout ratio | images/s |",
            "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in report["latency"]:
            layout = "nhwc" if r.get("channels_last") else "as given"
            lines.append(
                f"| {r['method']} | {r['model']} | {r['batch']} | {layout} "
                f"| {r['camkit_ms']:.1f} | {r['model_ms']:.1f} | {r['ratio']:.3f} "
                f"| {r['cpu_ratio']:.3f} | {r.get('layout_ratio', r['ratio']):.3f} "
                f"| {r['images_per_s']:.1f} |"
            )
        lines.append("")
    if report["throughput"]:
        lines += [
            "## Many images",
            "",
            f"One call on a batch; median of {s['throughput_repeats']} runs after a warm-up "
            "run, interleaved with the bare model's passes.",
            "",
            "| method | model | batch | layout | camkit images/s | model images/s | ratio "
            "| same-layout ratio |",
            "|---|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in report["throughput"]:
            layout = "nhwc" if r.get("channels_last") else "as given"
            lines.append(
                f"| {r['method']} | {r['model']} | {r['batch']} | {layout} "
                f"| {r['images_per_s']:.1f} | {r['model_images_per_s']:.1f} | {r['ratio']:.3f} "
                f"| {r.get('layout_ratio', r['ratio']):.3f} |"
            )
        lines.append("")
    if report["score"]:
        lines += [
            "## Score family",
            "",
            f"Median of {s['score_repeats']} runs after a warm-up run, interleaved. Limit: "
            "C x N bare forwards (fp32, the model as given) in chunks of the method's batch "
            "size; ratio = exact / limit (the chunk-size table below gives the cost of the "
            'channels-last forwards the scorer runs). bf16: the `precision="bf16"` mode, its '
            "maps against exact mode's (Pearson r; top 20%: share of the exact map's top-20% "
            "pixels among the bf16 map's). Peak: rise of peak RSS during one exact call, and "
            "during bare channels-last chunk forwards, each in a fresh process.",
            "",
            "| method | model | C x N | forwarded | exact s | limit s | ratio | bf16 s "
            "| bf16 speed-up | Pearson r | top 20% | peak MiB: call / forwards |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in report["score"]:
            peaks = " / ".join(
                "-" if r.get(k) is None else f"{r[k]:.0f}"
                for k in ("peak_mib", "forwards_peak_mib")
            )
            lines.append(
                f"| {r['method']} | {r['model']} | {r['channels']} x {r['samples']} "
                f"| {r['forwarded']} | {r['exact_s']:.2f} | {r['limit_s']:.2f} "
                f"| {r['ratio']:.3f} | {r['bf16_s']:.2f} | {r['bf16_speedup']:.2f}x "
                f"| {r['pearson']:.4f} | {r['top20_overlap']:.3f} | {peaks} |"
            )
        if any(r["forwarded"] < r["nominal_forwards"] for r in report["score"]):
            lines += [
                "",
                "Forwarded below C x N: identical masks of an image (constant channels; "
                "IS-CAM's first step, the all-zero input) are forwarded once.",
            ]
        lines.append("")
    if report["chunk_sizes"]:
        lines += [
            "## Chunk size",
            "",
            "One forward of a channels-last chunk, per image: fp32 through the model as "
            'given, bf16 through the bfloat16 inference copy `precision="bf16"` uses.',
            "",
            "| model | batch size | fp32 ms/image | bf16 ms/image |",
            "|---|---:|---:|---:|",
        ]
        for r in report["chunk_sizes"]:
            lines.append(
                f"| {r['model']} | {r['batch_size']} | {r['fp32_ms_per_image']:.2f} "
                f"| {r['bf16_ms_per_image']:.2f} |"
            )
        lines.append("")
    for r in report["skipped"]:
        lines.append(f"- skipped {r['method']} on {r['model']}: {r['reason']}")
    return "\n".join(lines).rstrip() + "\n"


# -- command line ---------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.split(r"[,\s]+", text.strip()) if v]


def _names(text: str) -> list[str]:
    return [v for v in re.split(r"[,\s]+", text.strip()) if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m camkit.bench",
        description="Time camkit's methods against the bare model's own cost.",
    )
    p.add_argument("--methods", type=_names, help="method names or fnmatch patterns")
    p.add_argument("--models", type=_names, default=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--batch-sizes", type=_ints, default=[1, 16])
    p.add_argument("--score-batch-sizes", type=_ints, default=[1])
    p.add_argument("--throughput-batch", type=int, default=64, help="many-images batch (0: skip)")
    p.add_argument("--throughput-models", type=_names, default=["resnet18"])
    p.add_argument(
        "--throughput-methods",
        type=_names,
        default=["cam", "gradcam"],
        help="methods (fnmatch patterns) timed on the many-images batch",
    )
    p.add_argument("--throughput-repeats", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--score-repeats", type=int, default=3)
    p.add_argument(
        "--score-batch-size", type=int, help="the Score family's batch_size (default: its own)"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="num_samples of methods that have one (default: 1, IS-CAM 2, to bound the time)",
    )
    p.add_argument(
        "--chunk-sizes", type=_ints, default=[8, 16, 32, 64], help="chunk sizes to compare"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="a tiny model and few runs")
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        help="import MODULE[:ATTR] and register it as a camkit plugin",
    )
    p.add_argument("--output", help="write the results as JSON to this file")
    p.add_argument("--markdown", help="write the tables as Markdown to this file")
    p.add_argument("--probe-memory", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for plugin in args.plugin:
        module_name, _, attr = plugin.partition(":")
        module = importlib.import_module(module_name)
        camkit.register_plugin(getattr(module, attr) if attr else module, plugin)
    if args.probe_memory:
        print(json.dumps(probe_memory(json.loads(args.probe_memory))))
        return 0
    if args.quick:
        args.models = args.throughput_models = ["tiny"]
        args.throughput_batch, args.throughput_repeats = 8, 1
        args.batch_sizes, args.score_batch_sizes = [1, 4], [1]
        args.repeats, args.warmup, args.score_repeats = 2, 1, 1
        args.chunk_sizes = [4, 8]
    report = run(args)
    text = markdown(report)
    print(text)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(report, handle, indent=2)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(text)
    return 0


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
