"""What the benchmarks measure: the models, each kind of method against its baseline, the
scoring forwards per chunk size, and peak memory (in a fresh process).

Methods are run only through ``camkit.create`` and its public options (``precision``,
``channels_last``, ``batch_size``); what a method does (its forward and backward passes) is
observed through module hooks on the model.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from benchmarks.harness import (
    Fn,
    backward_count,
    bare_forward,
    cpu_seconds,
    forward_backward,
    forward_sizes,
    interleaved,
    loadavg,
    log,
    machine,
    peak_rss_during,
    pearson,
    rows_of,
    top_overlap,
)
from camkit.engine.accel import accelerator
from camkit.engine.layers import resolve
from camkit.engine.outputs import layer_tensor, to_channels_first

ROOT = Path(__file__).resolve().parents[1]


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


def _shapes_cnn() -> nn.Module:
    from camkit import zoo

    return zoo.load_model("shapes-cnn")


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(_torchvision("resnet18"), "layer4", 224),
    # CAM needs the classifier that reads the layer's 576 channels (the first of two).
    "mobilenet_v3_small": ModelSpec(
        _torchvision("mobilenet_v3_small"),
        "features[-1]",
        224,
        {"cam": {"fc_layer": "classifier.0"}},
    ),
    # Trained weights (embedded): map fidelity of reduced precisions on a model that works.
    "shapes-cnn": ModelSpec(_shapes_cnn, "features", 64),
    "tiny": ModelSpec(_tiny, "relu2", 32),
}

#: ``num_samples`` of methods that have one, unless ``--num-samples`` is given: 1 keeps the run
#: short, but IS-CAM's first integration step is the all-zero input, so it needs two.
SAMPLES: dict[str, int] = {"iscam": 2}

#: Masked inputs per forward of perturbation methods, unless ``--score-batch-size`` is given.
SCORE_BATCH_SIZE = 32

#: Short latency runs repeat until they fill about this many seconds, up to MOST_REPEATS
#: rounds: at batch 1 a single run's noise is a few percent.
LATENCY_SECONDS = 1.0
MOST_REPEATS = 60


def method_kind(name: str) -> str:
    """``"gradient"`` (the method needs gradients), ``"perturbation"`` (it declares many
    forwards and no gradients) or ``"activation"``."""
    info = camkit.method_info(name)
    if info.needs_gradients:
        return "gradient"
    return "perturbation" if info.many_forwards else "activation"


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


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS[name].build().eval()


def make_input(model_name: str, batch: int) -> Tensor:
    if model_name == "shapes-cnn":
        from camkit import zoo

        images, _, _ = zoo.shapes.generate(batch, seed=1)
        return images
    gen = torch.Generator().manual_seed(1)
    size = MODELS[model_name].size
    return torch.randn(batch, 3, size, size, generator=gen)


def method_config(name: str, model_name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The keywords ``camkit.create`` gets: the model's overrides, ``num_samples`` where the
    method has one, the run option ``batch_size`` for perturbation methods."""
    config = dict(MODELS[model_name].configs.get(name, {}))
    fields = camkit.method_info(name).config.model_fields
    if "num_samples" in fields:
        config["num_samples"] = args.num_samples or SAMPLES.get(name, 1)
    if method_kind(name) == "perturbation":
        config["batch_size"] = args.score_batch_size or SCORE_BATCH_SIZE
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
    backwards = backward_count(model, lambda: extractor(x))
    sizes = forward_sizes(model, lambda: extractor(x))
    inputs = [rows_of(x, n) for n in sizes]
    # The backward passes belong to the last forwards (a method that never reads the clean
    # input's gradients, like Smooth Grad-CAM++, makes none for the first).
    with_backward = [i >= len(sizes) - backwards for i in range(len(sizes))]
    noise = noise_draws(name, config, x)

    # The same passes with the input laid out as camkit's forward lays it out (channels-last
    # where that is faster, as the engine's accelerator decides): camkit's own cost, apart
    # from what the layout saves.
    laid_out = list(inputs)
    if laid_out and accelerator(model).explain_channels_last(laid_out[0]):
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
    """A Score-family method, exact and in each reduced precision, against ``C x N`` bare
    forwards."""
    spec = MODELS[model_name]
    x = make_input(model_name, batch)
    config = method_config(name, model_name, args)
    exact = camkit.create(name, model, spec.layer, progress=False, **config, precision="fp32")
    fast = {
        p: camkit.create(name, model, spec.layer, progress=False, **config, precision=p)
        for p in args.precisions
    }
    chunk = exact.options.batch_size
    samples = int(config.get("num_samples", 1))
    channels = layer_channels(model, resolve(model, spec.layer)[1], x)
    nominal = batch * channels * samples
    full = rows_of(x, chunk)
    last = rows_of(x, nominal % chunk) if nominal % chunk else None
    # Warm-up: one forward of each shape and layout the limit uses, one call of each mode
    # (a reduced precision builds its inference copy on first use).
    bare_forward(model, x)
    bare_forward(model, full)
    for extractor in fast.values():
        extractor(x)

    def limit() -> None:
        for _ in range(nominal // chunk):
            bare_forward(model, full)
        if last is not None:
            bare_forward(model, last)

    results: dict[str, Any] = {}

    def run_exact() -> None:
        results["sizes"] = forward_sizes(model, lambda: results.update(exact=exact(x)))

    fns: dict[str, Fn] = {"limit": limit, "exact": run_exact}
    for p, extractor in fast.items():
        fns[p] = functools.partial(lambda p, e: results.update({p: e(x)}), p, extractor)
    t = interleaved(fns, args.score_repeats, warmup=0)
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
        "exact_min_s": min(t["exact"].wall),
        "limit_s": t["limit"].median,
        "ratio": t["exact"].median / t["limit"].median,
        "cpu_ratio": t["exact"].cpu_median / t["limit"].cpu_median,
        "runs": args.score_repeats,
    }
    for p in fast:
        pairs = list(zip(results["exact"].maps, results[p].maps))
        row[p] = {
            "s": t[p].median,
            "min_s": min(t[p].wall),
            "speedup": t["exact"].median / t[p].median,
            "speedup_of_minima": min(t["exact"].wall) / min(t[p].wall),
            "pearson": min(pearson(a, b) for a, b in pairs),
            "top20_overlap": statistics.mean(top_overlap(a, b) for a, b in pairs),
            # What ran: the plan for as many forwards, their time measured by the calls.
            "mode": accelerator(model, precision=p).scoring(x, rows=row["forwarded"]).mode,
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
    """Per-image cost of one channels-last forward at each chunk size, in fp32 and as each
    reduced precision runs it."""
    x = make_input(model_name, 1)
    fns: dict[str, Fn] = {}
    for size in sizes:
        rows = rows_of(x, size).contiguous(memory_format=torch.channels_last)
        fns[f"fp32/{size}"] = functools.partial(bare_forward, model, rows)
        for p in args.precisions:
            fns[f"{p}/{size}"] = _planned_forward(model, p, rows)
    t = interleaved(fns, args.score_repeats, warmup=1)
    return [
        {
            "model": model_name,
            "batch_size": size,
            "fp32_ms_per_image": t[f"fp32/{size}"].median * 1e3 / size,
            **{f"{p}_ms_per_image": t[f"{p}/{size}"].median * 1e3 / size for p in args.precisions},
        }
        for size in sizes
    ]


def _planned_forward(model: nn.Module, precision: str, rows: Tensor) -> Fn:
    """A forward of ``rows`` as the scoring service runs it in ``precision`` (the module,
    dtype and autocast the engine's accelerator chooses)."""
    plan = accelerator(model, precision=precision).scoring(rows)
    inputs = rows.to(plan.dtype)

    def run() -> Tensor:
        with torch.autocast(rows.device.type, dtype=torch.bfloat16, enabled=plan.autocast):
            return bare_forward(plan.model, inputs)

    return run


# -- memory probes (run in a fresh process) -------------------------------------------------


def probe_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak memory of one call of ``spec["method"]`` on a model built in this process or, when
    it is ``None``, of bare forwards of ``spec["rows"]`` channels-last images, as the scorer
    forwards them: four, as the peak stops growing after the second (the allocator does not
    reuse all of the first forward's memory)."""
    model_name = spec["model"]
    model = build_model(model_name)
    x = make_input(model_name, spec["batch"])
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
            **spec["config"],
        )
        peak, how = peak_rss_during(lambda: extractor(x))
    return {"peak_mib": peak, "how": how}


def _probe_in_subprocess(spec: dict[str, Any], args: argparse.Namespace) -> float | None:
    command = [sys.executable, "-m", "benchmarks", "--probe-memory", json.dumps(spec)]
    for plugin in args.plugin:
        command += ["--plugin", plugin]
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        log(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mib"])


# -- the run --------------------------------------------------------------------------------


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
        "load_before": loadavg(),
        "settings": {k: v for k, v in vars(args).items() if k != "probe_memory"},
        "latency": [],
        "throughput": [],
        "score": [],
        "chunk_sizes": [],
        "first_call": [],
        "tasks": [],
        "registered": [],
        "skipped": [],
    }
    started, cpu_started = time.perf_counter(), cpu_seconds()
    for model_name in args.models:
        model = build_model(model_name)
        chunk_peaks: dict[tuple[str, int], float | None] = {}
        for name in methods:
            for section, batch in _runs(name, model_name, args):
                log(f"{name} on {model_name}, batch {batch}")
                try:
                    if section == "score":
                        row = bench_perturbation(
                            name, model_name, model, batch, args, chunk_peaks=chunk_peaks
                        )
                    else:
                        many = section == "throughput"
                        repeats = args.throughput_repeats if many else args.repeats
                        warmup = 1 if many else args.warmup
                        row = bench_latency(
                            name, model_name, model, batch, args, repeats=repeats, warmup=warmup
                        )
                except camkit.errors.CamkitError as exc:
                    report["skipped"].append(
                        {"method": name, "model": model_name, "batch": batch, "reason": str(exc)}
                    )
                else:
                    report[section].append(row)
        if args.chunk_sizes:
            log(f"chunk sizes on {model_name}")
            report["chunk_sizes"] += bench_chunk_sizes(model_name, model, args.chunk_sizes, args)
    _coverage(report, args)
    report["seconds"] = time.perf_counter() - started
    # CPU seconds of this process and its memory probes: under load, wall time stretches but
    # CPU time barely does, so this divided by the threads estimates a quiet run's length.
    report["cpu_seconds"] = cpu_seconds() - cpu_started
    report["load_after"] = loadavg()
    return report


def _coverage(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The first calls, the task models and the methods included by registered name
    (:mod:`benchmarks.coverage`)."""
    from benchmarks import coverage

    for spec in getattr(args, "first_call", None) or []:
        log(f"first call {spec}")
        report["first_call"].append(coverage.bench_first_call(spec, args))
    registered = camkit.list_methods()
    for task in getattr(args, "tasks", None) or []:
        for name in getattr(args, "task_methods", None) or []:
            if name not in registered:
                report["skipped"].append(
                    {"method": name, "model": task, "batch": 1, "reason": "not registered"}
                )
                continue
            log(f"{name} on the {task} model")
            report["tasks"].append(coverage.bench_task(task, name, args))
    names = getattr(args, "registered", None)
    for name in coverage.ENTRIES if names is None else names:
        if name not in coverage.ENTRIES:
            raise SystemExit(
                f"--registered: no entry {name!r}; known: {', '.join(coverage.ENTRIES)}"
            )
        log(f"{name} by registered name")
        try:
            row = coverage.bench_registered(name, args, bool(args.quick))
        except camkit.errors.CamkitError as exc:  # e.g. a method that needs a config
            row = {"method": name, "status": f"failed: {exc}".replace("|", "/")[:200]}
        report["registered"].append(row)


def _runs(name: str, model_name: str, args: argparse.Namespace) -> list[tuple[str, int]]:
    """The (section, batch) measurements of one method on one model."""
    if method_kind(name) == "perturbation":
        return [("score", batch) for batch in args.score_batch_sizes]
    runs = [("latency", batch) for batch in args.batch_sizes]
    if (
        args.throughput_batch
        and model_name in args.throughput_models
        and any(fnmatch.fnmatchcase(name, p) for p in args.throughput_methods)
    ):
        runs.append(("throughput", args.throughput_batch))
    return runs
