"""Scenarios beyond the classifiers' table: ``precision="auto"``'s first call on a fresh
model, a detector and a segmenter explained through camkit's task targets, and methods
included by registered name (skipped as "not registered" where absent).

- **first call**: a fresh model per run (no copy, calibration or measured forward time kept
  from before), exact against ``"auto"``, interleaved: what ``"auto"`` costs on a job too
  small to win back a calibration, and what it gains on one large enough;
- **tasks**: torchvision's Faster R-CNN (MobileNetV3-Large 320 FPN) and LR-ASPP
  (MobileNetV3-Large), ``weights=None, weights_backbone=None``, small images; a gradient
  method against forward + backward of the same target to the layer, a Score-family method
  against its ``C`` bare forwards;
- **registered**: :data:`ENTRIES` names methods that plugins (camkit-contrib) register, each
  with its model, layer and baseline; a name the registry lacks is reported, not run.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from benchmarks.harness import Fn, bare_forward, forward_sizes, interleaved, pearson, rows_of
from benchmarks.scenarios import MODELS, build_model, make_input, method_config, method_kind
from camkit.engine.accel import quantized
from camkit.engine.layers import resolve
from camkit.engine.outputs import layer_tensor, scores_of

# -- first call -------------------------------------------------------------------------------

PAIR = ("fp32", "auto")


def parse_first_call(spec: str) -> tuple[str, str, str, int]:
    """``model:method:layer:batch``, e.g. ``resnet18:scorecam:layer1:1``."""
    model, method, layer, batch = spec.split(":")
    return model, method, layer, int(batch)


def bench_first_call(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """One call of a method on a fresh model, exact against ``"auto"``, interleaved."""
    model_name, name, layer, batch = parse_first_call(spec)
    x = make_input(model_name, batch)
    config = method_config(name, model_name, args)
    results: dict[str, Any] = {}
    # A fresh model for every run, built before the timing starts.
    fresh = {p: [build_model(model_name) for _ in range(args.score_repeats + 1)] for p in PAIR}

    def first(precision: str) -> Fn:
        def run() -> None:
            model = fresh[precision].pop()
            extractor = camkit.create(
                name, model, layer, progress=False, precision=precision, **config
            )
            results[precision] = (extractor(x).maps, model)

        return run

    # One untimed round first: the process's own first-use costs (imports, kernels).
    t = interleaved({p: first(p) for p in PAIR}, args.score_repeats, 1)
    maps, model = results["auto"]
    return {
        "spec": spec,
        "method": name,
        "model": model_name,
        "layer": layer,
        "batch": batch,
        "fp32_s": t["fp32"].median,
        "auto_s": t["auto"].median,
        "speedup": t["fp32"].median / t["auto"].median,
        "pearson": min(pearson(a, b) for a, b in zip(maps, results["fp32"][0])),
        "int8": quantized.int8_status(model, x)[0] in ("ready", "check"),
        "runs": len(t["auto"].wall),
    }


# -- tasks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A task model: how to build it and its input, its target, and the layers of the
    gradient method and (fewer channels, fewer forwards) of the Score-family method."""

    build: Callable[[], nn.Module]
    size: int
    target: Callable[[nn.Module, Tensor], object]
    gradient_layer: str
    score_layer: str


def _detector() -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=128,
        max_size=128,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        rpn_pre_nms_top_n_test=100,  # an untrained RPN's 1000 proposals dominate otherwise
        rpn_post_nms_top_n_test=50,
    ).eval()


def _segmenter() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()


def _top_box(model: nn.Module, x: Tensor) -> object:
    from camkit.targets import DetectionTarget

    with torch.no_grad():
        found = model(x)
    boxes = torch.stack([d["boxes"][0] for d in found])
    labels = [int(d["labels"][0]) for d in found]
    return DetectionTarget(boxes, labels)


def _predicted_region(model: nn.Module, x: Tensor) -> object:
    from camkit.targets import SegmentationTarget

    with torch.no_grad():
        out = model(x)["out"]
    return SegmentationTarget.predicted(out, int(out[0, :, 0, 0].argmax()))


TASKS: dict[str, Task] = {
    "detection": Task(_detector, 128, _top_box, "backbone.body.16", "backbone.body.4"),
    "segmentation": Task(_segmenter, 64, _predicted_region, "backbone.16", "backbone.4"),
}


def target_forward_backward(model: nn.Module, layer: nn.Module, x: Tensor, target: Any) -> Tensor:
    """The model's own cost for a gradient method on a task: a forward, then the gradient of
    the target's score with respect to ``layer``'s output."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            scores = scores_of(model(x))
            index = torch.arange(x.shape[0])
            value = target(scores, index).sum()
            (grad,) = torch.autograd.grad(value, layer_tensor(captured[0], "layer"))
    finally:
        handle.remove()
    return grad


def bench_task(task_name: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """A method on a task model against the model's own cost for it (forward + backward for
    a gradient method, ``C`` bare forwards for a Score-family one)."""
    task = TASKS[task_name]
    model = task.build()
    x = torch.rand(1, 3, task.size, task.size, generator=torch.Generator().manual_seed(1))
    target = task.target(model, x)
    kind = method_kind(name)
    layer = task.score_layer if kind == "perturbation" else task.gradient_layer
    module = resolve(model, layer)[1]
    extractor = camkit.create(name, model, layer, progress=False)
    forwards = 1
    forwarded = sum(forward_sizes(model, lambda: extractor(x, targets=target)))
    if kind == "perturbation":
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            bare_forward(model, x)
        finally:
            handle.remove()
        channels = layer_tensor(captured[0], "layer").shape[1]
        forwards = 1 + channels
        # The clean forward, then C masked rows in chunks of the run option batch_size.
        chunk = extractor.options.batch_size
        batches = [x] + [rows_of(x, min(chunk, channels - i)) for i in range(0, channels, chunk)]
        baseline: Fn = lambda: [bare_forward(model, b) for b in batches]  # noqa: E731
    elif kind == "gradient":
        baseline = functools.partial(target_forward_backward, model, module, x, target)
    else:
        baseline = functools.partial(bare_forward, model, x)
    repeats = args.score_repeats if kind == "perturbation" else args.repeats
    t = interleaved({"camkit": lambda: extractor(x, targets=target), "model": baseline}, repeats, 1)
    return {
        "task": task_name,
        "method": name,
        "kind": kind,
        "layer": layer,
        "size": task.size,
        "forwards": forwards,
        "forwarded": forwarded,
        "camkit_ms": t["camkit"].median * 1e3,
        "model_ms": t["model"].median * 1e3,
        "ratio": t["camkit"].median / t["model"].median,
        "runs": len(t["camkit"].wall),
    }


# -- methods by registered name ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A method benchmarked by name: its model (a key of ``MODELS`` or ``VIT``), its layer
    (None: camkit locates it) and baseline (``"layer"``: forward + backward to the layer,
    ``"input"``: forward + backward to the input, ``"forward"``: one forward, ``"windows"``:
    one forward of every SESS window plus a forward + backward to the layer of every window),
    and, for an entry that is a method with run options, the method and the options."""

    model: str
    layer: str | None
    baseline: str
    method: str | None = None
    options: tuple[tuple[str, Any], ...] = ()


#: Methods that plugins (camkit-contrib) register; each is run only where the registry has it.
ENTRIES: dict[str, Entry] = {
    "fullgrad": Entry("resnet18", "layer4", "input"),
    "guidedgradcam": Entry("resnet18", "layer4", "input"),
    "shapleycam": Entry("resnet18", "layer4", "layer"),
    "legrad": Entry("vit", "blocks", "input"),
    "guidedbackprop": Entry("resnet18", "layer4", "input"),
    "finercam": Entry("resnet18", "layer4", "layer"),
    "refinecam": Entry("resnet18", "layer4", "layer"),
    "kpcacam": Entry("resnet18", "layer4", "forward"),
    "fem": Entry("resnet18", "layer4", "forward"),
    "gradcam+sess": Entry(
        "resnet18", "layer4", "windows", "gradcam", (("sess", {"num_scales": 3}),)
    ),
}

#: LeGrad's model: a small timm ViT, untrained, at 64 x 64 pixels.
VIT_SIZE = 64


def _vit() -> nn.Module:
    import timm

    torch.manual_seed(0)
    model: nn.Module = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=VIT_SIZE, num_classes=10
    )
    return model.eval()


def forward_backward_input(model: nn.Module, x: Tensor) -> Tensor:
    """A forward, then the gradient of the top class score with respect to the input."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = scores_of(model(x))
        top = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (grad,) = torch.autograd.grad(top, x)
    return grad


def windows_cost(model: nn.Module, layer: str | None, x: Tensor, sess: dict[str, Any]) -> None:
    """What SESS cannot avoid: one forward of every window (its score), then a forward and a
    backward to the layer for every window (the base method's gradients)."""
    from benchmarks.harness import forward_backward
    from camkit.engine.sess import SESSOptions, windows

    opts = SESSOptions(**sess)
    side = min(x.shape[-2:])
    found = torch.cat([w for w, _ in windows(x[:1], opts, side, side)])
    with torch.inference_mode():
        model(found)
    assert layer is not None
    forward_backward(model, resolve(model, layer)[1], found)


def bench_registered(name: str, args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    """A method named in :data:`ENTRIES`, or the reason it was not run."""
    entry = ENTRIES[name]
    method = entry.method or name
    if method not in camkit.list_methods():
        return {"method": name, "status": "not registered"}
    if entry.model == "vit":
        model_name, model, size = "vit_tiny", _vit(), VIT_SIZE
    else:
        model_name = "tiny" if quick else entry.model
        model = build_model(model_name)
        size = MODELS[model_name].size
    layer = entry.layer if entry.model == "vit" or not quick else MODELS["tiny"].layer
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    extractor = camkit.create(method, model, layer, progress=False, **dict(entry.options))
    baseline: Fn
    if entry.baseline == "windows":
        baseline = functools.partial(windows_cost, model, layer, x, dict(entry.options)["sess"])
    elif entry.baseline == "input":
        baseline = functools.partial(forward_backward_input, model, x)
    elif entry.baseline == "layer":
        from benchmarks.harness import forward_backward

        assert layer is not None
        baseline = functools.partial(forward_backward, model, resolve(model, layer)[1], x)
    else:
        baseline = functools.partial(bare_forward, model, x)
    t = interleaved({"camkit": lambda: extractor(x), "model": baseline}, args.repeats, 1)
    return {
        "method": name,
        "status": "ran",
        "model": model_name,
        "layer": layer or "(located)",
        "baseline": entry.baseline,
        "camkit_ms": t["camkit"].median * 1e3,
        "model_ms": t["model"].median * 1e3,
        "ratio": t["camkit"].median / t["model"].median,
    }
