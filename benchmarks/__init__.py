"""Benchmarks: what camkit costs next to the model's own cost, measured in the same run.

Not part of the installed package: run from the repository root with ``nox -s bench`` or
``python -m benchmarks``. Every registered method is timed on ``weights=None`` torchvision
models (and the embedded ``shapes-cnn``, whose trained weights make map fidelity
meaningful), and Markdown tables are printed (``--output`` writes JSON, ``--markdown`` the
tables). Each number is a median over repeated runs after warm-up, and each ratio divides
two medians whose runs were interleaved, so a machine that slows down during the run slows
both sides alike.

- :mod:`benchmarks.harness`: timing, pass counting (module hooks), fidelity, memory, the
  machine and its capabilities;
- :mod:`benchmarks.scenarios`: the models and what is measured for each kind of method:
  activation methods against the bare forwards, gradient methods against forward +
  backward to the layer, the Score family against ``B x C x N`` bare forwards (the limit of
  the exact method) and each reduced precision against exact mode;
- :mod:`benchmarks.coverage`: ``precision="auto"``'s first call on a fresh model, a
  detector and a segmenter explained through camkit's task targets, and methods included by
  registered name (reported "not registered" where absent);
- :mod:`benchmarks.report`: the Markdown tables.

Peak memory is the rise of the process's peak resident set size (``VmHWM``, reset through
``/proc/self/clear_refs``) over its resident size just before one call, measured in a fresh
subprocess per number so that no memory freed by earlier work is reused unseen.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Sequence

import torch

import camkit
from benchmarks.report import markdown
from benchmarks.scenarios import probe_memory, run


def _ints(text: str) -> list[int]:
    return [int(v) for v in re.split(r"[,\s]+", text.strip()) if v]


def _names(text: str) -> list[str]:
    return [v for v in re.split(r"[,\s]+", text.strip()) if v]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time camkit's methods against the bare model's own cost.",
    )
    p.add_argument("--methods", type=_names, help="method names or fnmatch patterns")
    p.add_argument(
        "--models", type=_names, default=["resnet18", "mobilenet_v3_small", "shapes-cnn"]
    )
    p.add_argument("--batch-sizes", type=_ints, default=[1, 16])
    p.add_argument("--score-batch-sizes", type=_ints, default=[1])
    p.add_argument(
        "--precisions",
        type=_names,
        default=["bf16", "auto"],
        help="reduced precisions compared with exact mode (bf16 is slow where emulated)",
    )
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
        "--score-batch-size", type=int, help="the Score family's batch_size (default: 32)"
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="num_samples of methods that have one (default: 1, IS-CAM 2, to bound the time)",
    )
    p.add_argument(
        "--chunk-sizes", type=_ints, default=[8, 16, 32, 64], help="chunk sizes to compare"
    )
    p.add_argument(
        "--first-call",
        type=_names,
        default=["resnet18:scorecam:layer1:1"],
        help='MODEL:METHOD:LAYER:BATCH first calls on fresh models, "fp32" against "auto" '
        '("": skip; e.g. resnet18:scorecam:layer4:1 for a job that pays for int8)',
    )
    p.add_argument(
        "--tasks",
        type=_names,
        default=["detection", "segmentation"],
        help="task models (detection, segmentation) explained through camkit's targets",
    )
    p.add_argument(
        "--task-methods",
        type=_names,
        default=["gradcam", "scorecam"],
        help="methods run on the task models (a gradient and a Score-family one)",
    )
    p.add_argument(
        "--registered",
        type=_names,
        help="methods benchmarked by registered name where registered (default: all of "
        "benchmarks.coverage.ENTRIES: fullgrad, guidedgradcam, shapleycam, legrad, ...)",
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
    p.add_argument(
        "--peers",
        action="store_true",
        help="time the compat shims against torchcam and pytorch-grad-cam instead "
        "(benchmarks.peers; its options: python -m benchmarks.peers --help)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks with command-line ``argv``; print the tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--peers" in argv:
        from benchmarks import peers

        return peers.main([a for a in argv if a != "--peers"])
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
        args.first_call = ["tiny:scorecam:relu2:1"]
        args.tasks = [t for t in args.tasks if t != "detection"]  # ~0.1 s a forward
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
