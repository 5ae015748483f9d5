r"""Deletion and insertion: how fast does the confidence fall (rise) as salient pixels go
(come)?

Pixels are ranked by saliency, most salient first (ties by position, so the order is
deterministic). *Deletion* starts from the image and, ``step`` pixels at a time, replaces
the next-ranked pixels with a *substrate* (zeros, or a blurred copy of the image); *insertion*
starts from the substrate and puts the image's pixels back in the same order. After
:math:`k = 0, 1, \dots, n` steps (:math:`n = \lceil HW / step \rceil`) the model's
confidence in the target class gives the curve :math:`c_k`, and the metric is the area under
it with the fraction of pixels changed on the x axis (trapezoidal rule):

.. math:: \mathrm{AUC} = \frac{1}{n} \Big( \sum_{k=0}^{n} c_k - \frac{c_0 + c_n}{2} \Big)

(with :math:`x_k = k / n`; the last step may change fewer than ``step`` pixels). Lower
deletion AUC and higher insertion AUC are better.

Source: Petsiuk et al., *RISE: Randomized Input Sampling for Explanation of Black-box
Models*, BMVC 2018, section 4.1 (zeros for deletion, a blurred image for insertion).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.errors import ConfigError
from camkit.metrics.checks import (
    check_images,
    check_maps,
    check_positive_int,
    check_substrate,
    check_targets,
)
from camkit.metrics.scores import ModelFn, target_scores

Substrate = Literal["zeros", "blur"] | Tensor


def gaussian_blur(images: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """``(B, C, H, W)`` images blurred by a normalized Gaussian kernel, edges replicated."""
    half = kernel_size // 2
    x = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - half
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (half, half, half, half), mode="replicate")
    rows = F.conv2d(padded, kernel.reshape(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.reshape(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def substrate_of(images: Tensor, substrate: Substrate, blur_sigma: float = 5.0) -> Tensor:
    """The ``(B, C, H, W)`` images that deleted pixels become: zeros, a blur, or given."""
    if isinstance(substrate, Tensor):
        return substrate.to(images.dtype).expand_as(images)
    if substrate == "zeros":
        return torch.zeros_like(images)
    if substrate == "blur":
        return gaussian_blur(images, blur_sigma)
    raise ValueError(f"substrate must be 'zeros', 'blur' or a tensor, got {substrate!r}")


def perturbation_curve(
    model: ModelFn,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    *,
    mode: Literal["deletion", "insertion"],
    step: int,
    substrate: Substrate,
    softmax: bool = True,
    blur_sigma: float = 5.0,
    batch_size: int = 128,
) -> Tensor:
    """The confidence curve of deletion or insertion.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        images: ``(B, C, H, W)`` images whose zero means "no signal" (e.g. pixel values in
            ``[0, 1]``, before normalization).
        saliency: ``(B, H, W)`` maps at the images' resolution.
        targets: ``(B,)`` class indices.
        mode: ``"deletion"`` or ``"insertion"``.
        step: pixels changed per step.
        substrate: ``"zeros"``, ``"blur"`` (Gaussian, ``blur_sigma``) or ``(B, C, H, W)``
            images.
        softmax: use the softmax probability of the target rather than its raw score.
        batch_size: perturbed images per forward pass (curves of several images share a
            pass when they fit).

    Returns:
        ``(B, n + 1)`` confidences after ``0 .. n`` steps, ``n = ceil(H * W / step)``.
    """
    check_maps(saliency, check_images(images))
    check_targets(targets, images.shape[0])
    check_positive_int(step, "step")
    check_positive_int(batch_size, "batch_size")
    check_substrate(substrate, images)
    if mode not in ("deletion", "insertion"):
        raise ConfigError(f"mode must be 'deletion' or 'insertion', got {mode!r:.100}")
    b, _, h, w = images.shape
    rows = math.ceil(h * w / step) + 1
    fill = substrate_of(images, substrate, blur_sigma)
    start, end = (images, fill) if mode == "deletion" else (fill, images)
    changed_count = torch.arange(rows, device=images.device)[:, None] * step

    def perturbed(i: int) -> Tensor:
        order = torch.argsort(saliency[i].flatten(), descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(h * w, device=order.device)
        changed = (rank[None] < changed_count).reshape(rows, 1, h, w)
        return torch.where(changed, end[i : i + 1], start[i : i + 1])

    # several images' curves per forward pass when they fit in one batch
    per_pass = max(1, batch_size // rows)
    curves = []
    for first in range(0, b, per_pass):
        chosen = range(first, min(b, first + per_pass))
        inputs = torch.cat([perturbed(i) for i in chosen])
        target = targets[first : first + len(chosen)].repeat_interleave(rows)
        scores = target_scores(model, inputs, target, softmax=softmax, batch_size=batch_size)
        curves.append(scores.reshape(len(chosen), rows))
    return torch.cat(curves)


def auc(curve: Tensor) -> Tensor:
    """Area under ``(B, n + 1)`` curves sampled at ``x = 0, 1/n, ..., 1`` (trapezoidal)."""
    n = curve.shape[1] - 1
    return (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / n


def deletion(
    model: ModelFn,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    *,
    step: int,
    substrate: Substrate = "zeros",
    softmax: bool = True,
    blur_sigma: float = 5.0,
    batch_size: int = 128,
) -> Tensor:
    """``(B,)`` deletion AUC (lower is better); arguments as :func:`perturbation_curve`."""
    return auc(
        perturbation_curve(
            model, images, saliency, targets, mode="deletion", step=step,
            substrate=substrate, softmax=softmax, blur_sigma=blur_sigma, batch_size=batch_size,
        )
    )  # fmt: skip


def insertion(
    model: ModelFn,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    *,
    step: int,
    substrate: Substrate = "blur",
    softmax: bool = True,
    blur_sigma: float = 5.0,
    batch_size: int = 128,
) -> Tensor:
    """``(B,)`` insertion AUC (higher is better); arguments as :func:`perturbation_curve`."""
    return auc(
        perturbation_curve(
            model, images, saliency, targets, mode="insertion", step=step,
            substrate=substrate, softmax=softmax, blur_sigma=blur_sigma, batch_size=batch_size,
        )
    )  # fmt: skip
