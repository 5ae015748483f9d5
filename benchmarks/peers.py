"""The compat shims against the libraries they replace: ``camkit.compat.torchcam`` against
torchcam 0.5.0 and ``camkit.compat.pytorch_grad_cam`` against pytorch-grad-cam 1.5.7, timed
in the same run, interleaved, on ResNet-18 (``weights=None``, ``layer4``).

Each number is the median of interleaved runs of three calls: the bare model (a forward, then
the gradient of the top class score with respect to ``layer4``'s output: what a gradient CAM
cannot avoid), the original and the shim, each called as a script written for the original
calls it, hooks included (torchcam: ``with Method(model, "layer4") as extractor:``, the
user's forward, then the extractor with class indices and scores; pytorch-grad-cam:
``with Method(model=..., target_layers=...) as cam: cam(input_tensor, targets)``, which runs
the model). Reported: each
library's time as a ratio to the bare model's, and shim / original (below 1: the shim is
faster).

Run: ``python -m benchmarks --peers [--quick]`` or ``python -m benchmarks.peers`` from the
repository root; ``nox -s bench -- --peers`` installs the peers (the ``compat-test`` extra).
A peer that is not installed is skipped with a note, as are methods that need
camkit-contrib (Eigen-CAM, Ablation-CAM) when it is absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import _ints, _names
from benchmarks.harness import forward_backward, interleaved, loadavg, log, machine

#: (camkit name, torchcam class, pytorch-grad-cam class); None where the peer lacks it.
METHODS: list[tuple[str, str | None, str | None]] = [
    ("Grad-CAM", "GradCAM", "GradCAM"),
    ("Grad-CAM++", "GradCAMpp", "GradCAMPlusPlus"),
    ("Score-CAM", "ScoreCAM", "ScoreCAM"),
    ("Layer-CAM", "LayerCAM", "LayerCAM"),
    ("XGrad-CAM", "XGradCAM", "XGradCAM"),
    ("Eigen-CAM", None, "EigenCAM"),
    ("Ablation-CAM", None, "AblationCAM"),
]
#: methods that forward one masked copy per channel: batch_size for both libraries.
PERTURBATION = {"Score-CAM": 64, "Ablation-CAM": 64}
#: pytorch-grad-cam's AblationCAM with AblationLayerFasterRCNN on a Faster R-CNN ResNet-50 FPN
#: (``weights=None``), explaining its own top three boxes (``FasterRCNNBoxScoreTarget``).
DETECTOR = "Ablation-CAM:FasterRCNN"
CONTRIB = {"Eigen-CAM", "Ablation-CAM"}
Call = Callable[[], object]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="Time the compat shims against torchcam and pytorch-grad-cam.",
    )
    p.add_argument("--size", type=int, default=112, help="input side in pixels")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4])
    p.add_argument("--methods", type=_names, help="camkit names, e.g. Grad-CAM,Score-CAM")
    p.add_argument(
        "--perturbation-batch-sizes",
        type=_ints,
        help="batch sizes for Score-CAM and Ablation-CAM (default: --batch-sizes)",
    )
    p.add_argument(
        "--detector-size", type=int, default=128, help=f"input side in pixels for {DETECTOR}"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="64 px, 2 runs, Score/Ablation batch 1")
    p.add_argument("--output", help="write the results as JSON to this file")
    p.add_argument("--markdown", help="write the table as Markdown to this file")
    return p


def available() -> dict[str, bool]:
    """Which of the peers and camkit-contrib are importable (nothing is imported)."""
    return {
        name: importlib.util.find_spec(module) is not None
        for name, module in (
            ("torchcam", "torchcam"),
            ("pytorch-grad-cam", "pytorch_grad_cam"),
            ("camkit-contrib", "camkit_contrib"),
        )
    }


def _torchcam_call(lib: Any, cls: str, model: nn.Module, x: Tensor, method: str) -> Call:
    kwargs = {"batch_size": PERTURBATION[method]} if method in PERTURBATION else {}
    classes = [1] * x.shape[0]

    def call() -> object:
        # torchcam's usage: hooks only for the duration of the with block.
        with getattr(lib, cls)(model, "layer4", **kwargs) as extractor:
            scores = model(x)
            return extractor(classes, scores)

    return call


def _grad_cam_call(lib: Any, cls: str, model: nn.Module, x: Tensor, method: str) -> Call:
    kwargs = {"batch_size": PERTURBATION[method]} if method == "Ablation-CAM" else {}
    targets = [lib.utils.model_targets.ClassifierOutputTarget(1)] * x.shape[0]

    def call() -> object:
        # pytorch-grad-cam's usage: its hooks live as long as the with block.
        with getattr(lib, cls)(model=model, target_layers=[model.layer4[-1]], **kwargs) as cam:
            if method == "Score-CAM":
                cam.batch_size = PERTURBATION[method]
            return cam(input_tensor=x, targets=targets)

    return call


def _libraries(have: dict[str, bool]) -> list[tuple[str, Any, Any, Callable[..., Call], int]]:
    """(peer name, original module, shim module, call builder, index into METHODS' row)."""
    libs: list[tuple[str, Any, Any, Callable[..., Call], int]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if have["torchcam"]:
            import torchcam.methods as tc

            import camkit.compat.torchcam.methods as tc_shim

            libs.append(("torchcam", tc, tc_shim, _torchcam_call, 1))
        if have["pytorch-grad-cam"]:
            import pytorch_grad_cam as gc

            import camkit.compat.pytorch_grad_cam as gc_shim

            libs.append(("pytorch-grad-cam", gc, gc_shim, _grad_cam_call, 2))
    return libs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every method each peer has, at each batch size; return the results."""
    from torchvision.models import resnet18

    if args.quick:
        args.size, args.repeats, args.warmup = 64, 2, 1
        args.perturbation_batch_sizes = args.perturbation_batch_sizes or [1]
    have = available()
    notes = [f"{name} is not installed: skipped" for name, ok in have.items() if not ok]
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    results: list[dict[str, Any]] = []
    wanted = set(args.methods) if args.methods else None
    for peer, original, shim, build, column in _libraries(have):
        for row in METHODS:
            method, cls = row[0], row[column]
            if cls is None or (wanted is not None and method not in wanted):
                continue
            if method in CONTRIB and not have["camkit-contrib"]:
                continue
            batches = args.batch_sizes
            if method in PERTURBATION and args.perturbation_batch_sizes:
                batches = args.perturbation_batch_sizes
            for batch in batches:
                x = torch.randn(
                    batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
                )
                log(f"{peer} {method} batch {batch} ({args.size} px)")
                fns = {
                    "bare": lambda x=x: forward_backward(model, model.layer4, x),
                    "original": build(original, cls, model, x, method),
                    "shim": build(shim, cls, model, x, method),
                }
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = interleaved(fns, args.repeats, args.warmup)
                bare, orig, ours = t["bare"].median, t["original"].median, t["shim"].median
                results.append(
                    {
                        "peer": peer, "method": method, "class": cls, "batch": batch,
                        "size": args.size, "bare_s": bare, "original_s": orig, "shim_s": ours,
                        "original_x_bare": orig / bare, "shim_x_bare": ours / bare,
                        "shim_over_original": ours / orig,
                    }
                )  # fmt: skip
    detector = have["pytorch-grad-cam"] and have["camkit-contrib"]
    if detector and (wanted is None or DETECTOR in wanted):
        results.append(_detector_row(args))
    return {
        "machine": machine(),
        "loadavg": loadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "markdown")},
        "notes": notes,
        "results": results,
    }


def _detector_row(args: argparse.Namespace) -> dict[str, Any]:
    """:data:`DETECTOR` at batch 1; the bare time is the detector's forward (no gradient)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    import camkit.compat.pytorch_grad_cam as gc_shim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam as gc
        from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN

    size = args.detector_size
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=size,
        max_size=size, rpn_pre_nms_top_n_test=30, rpn_post_nms_top_n_test=10,
    ).eval()  # fmt: skip
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        found = model(x)[0]
    labels, boxes = found["labels"][:3], found["boxes"][:3].numpy()

    def build(lib: Any, layer: Any) -> Call:
        def call() -> object:
            targets = [lib.utils.model_targets.FasterRCNNBoxScoreTarget(labels, boxes)]
            transform = lib.utils.reshape_transforms.fasterrcnn_reshape_transform
            with lib.AblationCAM(
                model, [model.backbone], transform, ablation_layer=layer(), batch_size=32
            ) as cam:
                return cam(x, targets=targets)

        return call

    def bare() -> object:
        with torch.no_grad():
            return model(x)

    log(f"pytorch-grad-cam {DETECTOR} batch 1 ({size} px)")
    fns = {
        "bare": bare,
        "original": build(gc, AblationLayerFasterRCNN),
        "shim": build(gc_shim, gc_shim.AblationLayerFasterRCNN),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = interleaved(fns, args.repeats, args.warmup)
    bare_s, orig, ours = t["bare"].median, t["original"].median, t["shim"].median
    return {
        "peer": "pytorch-grad-cam", "method": DETECTOR, "class": "AblationCAM", "batch": 1,
        "size": size, "bare_s": bare_s, "original_s": orig, "shim_s": ours,
        "original_x_bare": orig / bare_s, "shim_x_bare": ours / bare_s,
        "shim_over_original": ours / orig,
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """The results as a Markdown table, with the machine and its load."""
    m = report["machine"]
    s = report["settings"]
    lines = [
        "## The compat shims against the originals",
        "",
        f"ResNet-18 (weights=None), `layer4`, {s['size']} x {s['size']} px, median of "
        f"{s['repeats']} interleaved runs after {s['warmup']} warm-up. Machine: {m['cpu']}, "
        f"{m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}; load "
        f"average at the end {report['loadavg']}.",
        "",
        *(
            [f"{DETECTOR}: {s['detector_size']} px; its bare time is the detector's forward.", ""]
            if any(r["method"] == DETECTOR for r in report["results"])
            else []
        ),
        "| peer | method | batch | bare fwd+bwd (ms) | original (ms) | shim (ms) "
        "| original / bare | shim / bare | shim / original |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['peer']} | {r['method']} | {r['batch']} | {1e3 * r['bare_s']:.1f} "
            f"| {1e3 * r['original_s']:.1f} | {1e3 * r['shim_s']:.1f} "
            f"| {r['original_x_bare']:.2f} | {r['shim_x_bare']:.2f} "
            f"| {r['shim_over_original']:.2f} |"
        )
    lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the peer benchmark with command-line ``argv``; print the table."""
    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    sys.exit(main())
