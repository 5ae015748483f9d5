"""Naive references for the task tests: own hook, own autograd call, per-image loops.

They share no code with camkit: the detection target is recomputed from the detector's
list of dicts box by box, the IoU from its definition.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``score(raw model output) -> (B,)``: the explained score of each image.
RawScore = Callable[[Any], Tensor]


def iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of two ``(x1, y1, x2, y2)`` boxes."""
    w = torch.clamp(torch.min(a[2], b[2]) - torch.max(a[0], b[0]), min=0)
    h = torch.clamp(torch.min(a[3], b[3]) - torch.max(a[1], b[1]), min=0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def box_score(detections: dict[str, Tensor], box: Tensor, label: int) -> Tensor:
    """Best ``score * IoU`` with ``box`` over the detections labelled ``label``, else 0."""
    best = torch.zeros(())
    for b, s, lab in zip(detections["boxes"], detections["scores"], detections["labels"]):
        if int(lab) == label:
            best = torch.maximum(best, s * iou(b, box))
    return best


def detection_score(boxes: Tensor, labels: list[int]) -> RawScore:
    """The detection target of image ``i``: its reference box ``boxes[i]``, class ``labels[i]``."""

    def score(output: list[dict[str, Tensor]], images: list[int] | None = None) -> Tensor:
        images = images if images is not None else list(range(len(output)))
        return torch.stack([box_score(d, boxes[i], labels[i]) for d, i in zip(output, images)])

    return score


def gradcam(model: nn.Module, layer: str, x: Tensor, score: RawScore) -> Tensor:
    """``(B, h, w)`` Grad-CAM: ReLU(sum_k mean(dS/dA_k) A_k), with our own hook."""
    captured: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        leaf = out.detach().clone().requires_grad_(True)
        captured.append(leaf)
        return leaf * 1

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(score(model(x)).sum(), captured[-1])
    finally:
        handle.remove()
    acts = captured[-1].detach()
    return torch.relu(torch.einsum("bc,bchw->bhw", grad.mean((2, 3)), acts))


def activations(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    captured: list[Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[-1]


def scorecam(model: nn.Module, layer: str, x: Tensor, score: RawScore) -> Tensor:
    """``(B, h, w)`` Score-CAM: softmax over channels of the score gain of each masked image,
    one image and one channel per forward."""
    acts = activations(model, layer, x)
    maps = []
    for b in range(x.shape[0]):
        with torch.no_grad():
            clean = score(model(x[b : b + 1]), [b])[0]
            gains = []
            for a in acts[b]:
                span = a.max() - a.min()
                mask = (a - a.min()) / span if span > 0 else torch.zeros_like(a)
                up = F.interpolate(mask[None, None], size=x.shape[2:], mode="bilinear")
                gains.append(score(model(x[b : b + 1] * up[0]), [b])[0] - clean)
        weights = torch.softmax(torch.stack(gains), 0)
        maps.append(torch.relu(torch.einsum("c,chw->hw", weights, acts[b])))
    return torch.stack(maps)


def ablationcam(model: nn.Module, layer: str, x: Tensor, score: RawScore) -> Tensor:
    """``(B, h, w)`` Ablation-CAM: relative score drop with each channel zeroed."""
    acts = activations(model, layer, x)
    module = model.get_submodule(layer)
    maps = []
    with torch.no_grad():  # the clean scores of the batch, as it is explained
        cleans = score(model(x), list(range(x.shape[0])))
    for b in range(x.shape[0]):
        with torch.no_grad():
            clean = cleans[b]
            drops = []
            for k in range(acts.shape[1]):

                def zero(_m: nn.Module, _i: object, out: Tensor, k: int = k) -> Tensor:
                    out = out.clone()
                    out[:, k] = 0
                    return out

                handle = module.register_forward_hook(zero)
                try:
                    ablated = score(model(x[b : b + 1]), [b])[0]
                finally:
                    handle.remove()
                drops.append((clean - ablated) / (clean if clean != 0 else 1))
        maps.append(torch.relu(torch.einsum("c,chw->hw", torch.stack(drops), acts[b])))
    return torch.stack(maps)
