r"""ROAD: remove and debias. Confidence after the most (least) salient pixels are imputed.

Removing pixels by painting them a constant leaks the removed shape to the model (the
"class information leakage" of the paper), so ROAD fills them by *noisy linear imputation*:
each removed pixel :math:`x_i` takes the weighted mean of its 8 neighbours inside the image
(weight :math:`1/6` for the 4 edge neighbours, :math:`1/12` for the 4 corners, renormalized
at the border), removed neighbours included, which is the sparse linear system

.. math:: \Big(\sum_{n \in N(i)} w_n\Big) x_i - \sum_{n \in N(i)} w_n x_n = 0
          \quad \text{for every removed } i,

solved for all removed pixels at once (per channel); then Gaussian noise of standard deviation
``noise`` is added to the imputed values. With a share :math:`f` of the pixels removed,

- *MoRF* (most relevant first) imputes the pixels whose saliency is above the
  :math:`(1 - f)` quantile of the map: the confidence should fall (lower is better);
- *LeRF* (least relevant first) imputes those below the :math:`f` quantile: the confidence
  should stay (higher is better)

(ties at the threshold are split by position, see :func:`removal_mask`).

Each returns the change in target confidence (imputed minus clean), averaged over the shares
``removed``; :func:`road_combined` is :math:`(\mathrm{LeRF} - \mathrm{MoRF}) / 2` (higher is
better). pytorch-grad-cam's ``ROADMostRelevantFirst(percentile=p)`` and
``ROADLeastRelevantFirst(percentile=p)`` are the share :math:`f = 1 - p / 100`.

Source: Rong et al., *A Consistent and Efficient Evaluation Strategy for Attribution
Methods*, ICML 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.metrics.scores import ModelFn, target_scores

Order = Literal["morf", "lerf"]
#: The shares of pixels removed that :func:`road` averages over by default.
DEFAULT_REMOVED = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


#: ``(row offset, column offset, weight)`` of the 8 neighbours of a pixel.
_NEIGHBOURS = tuple(
    (dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if (dy, dx) != (0, 0)
)


def _neighbour_sum(t: Tensor) -> Tensor:
    """Weighted sum of each pixel's 8 neighbours in ``(B, C, H, W)``; outside counts as 0."""
    height, width = t.shape[-2:]
    padded = F.pad(t, (1, 1, 1, 1))
    out = torch.zeros_like(t)
    for dy, dx, weight in _NEIGHBOURS:
        out.add_(padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], alpha=weight)
    return out


def noisy_linear_imputation(
    images: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-7,
    max_iterations: int = 100_000,
) -> Tensor:
    """Fill the removed pixels with the weighted mean of their neighbours, plus noise.

    The linear system of the module docstring is symmetric positive definite whenever some
    pixel of the image is kept; it is solved by conjugate gradients in float64, all images
    and channels at once.

    Args:
        images: ``(B, C, H, W)``.
        removed: ``(B, H, W)`` bool, true where a pixel is imputed (all channels).
        noise: standard deviation of the Gaussian noise added to imputed values (0: none).
        generator: random source of the noise.
        tolerance: stop when the residual's norm is below ``tolerance`` times the right-hand
            side's.
        max_iterations: conjugate-gradient iterations at most.

    Returns:
        ``(B, C, H, W)`` images, equal to ``images`` at kept pixels.

    Raises:
        ValueError: when ``removed`` covers a whole image (nothing to impute from).

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> hole = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> hole[0, 1, 1] = True
        >>> noisy_linear_imputation(x, hole, noise=0.0)[0, 0, 1, 1]
        tensor(5.)
    """
    if removed.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"removed must be (B, H, W) = {(images.shape[0], *images.shape[2:])}, "
            f"got {tuple(removed.shape)}"
        )
    if bool(removed.flatten(1).all(1).any()):
        raise ValueError("removed covers a whole image: no pixel is left to impute from")
    x = images.double()
    unknown = removed[:, None].to(x.dtype).expand_as(x)
    # zero padding drops the neighbours outside the image, as the border rule wants
    neighbours = _neighbour_sum
    degree = neighbours(torch.ones_like(x))

    def system(v: Tensor) -> Tensor:
        return unknown * (degree * v - neighbours(unknown * v))

    rhs = unknown * neighbours((1 - unknown) * x)
    solution = torch.zeros_like(x)
    residual = rhs.clone()
    direction = residual.clone()
    rr = (residual * residual).sum((1, 2, 3), keepdim=True)
    stop = tolerance**2 * rr.clamp(min=1e-300)
    for _ in range(max_iterations):
        if bool((rr <= stop).all()):
            break
        product = system(direction)
        step = rr / (direction * product).sum((1, 2, 3), keepdim=True).clamp(min=1e-300)
        solution = solution + step * direction
        residual = residual - step * product
        new_rr = (residual * residual).sum((1, 2, 3), keepdim=True)
        direction = residual + (new_rr / rr.clamp(min=1e-300)) * direction
        rr = new_rr
    filled = solution.to(images.dtype)
    if noise:
        filled = filled + noise * torch.randn(
            images.shape, generator=generator, dtype=images.dtype, device="cpu"
        ).to(images.device)
    return torch.where(removed[:, None], filled, images)


def removal_mask(saliency: Tensor, share: float, order: Order) -> Tensor:
    """``(B, H, W)`` bool: the pixels ROAD imputes when ``share`` of them are removed.

    Pixels are ranked by saliency, ascending for ``"morf"`` and descending for ``"lerf"``
    (ties by position, so the result is deterministic); of the ``N`` pixels, those of 0-based
    rank at least :math:`(N - 1)(1 - share)` are removed: the pixels above the ``1 - share``
    quantile of the map, with ties at the threshold split by position rather than all
    removed (which would remove the whole image of a map that is mostly 0).

    Example:
        >>> removal_mask(torch.tensor([[[0.0, 0.2], [0.6, 1.0]]]), 0.5, "morf")
        tensor([[[False, False],
                 [ True,  True]]])
    """
    if not 0 < share < 1:
        raise ValueError(f"the share of pixels removed must be in (0, 1), got {share}")
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf', got {order!r}")
    flat = saliency.flatten(1)
    pixels = flat.shape[1]
    first_removed = math.ceil(round((pixels - 1) * (1 - share), 9))
    order_ = torch.argsort(flat, dim=1, descending=order == "lerf", stable=True)
    rank = torch.empty_like(order_)
    rank.scatter_(1, order_, torch.arange(pixels, device=flat.device).expand_as(order_))
    return (rank >= first_removed).reshape(saliency.shape)


def road(
    model: ModelFn,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    *,
    order: Order,
    removed: Sequence[float] = DEFAULT_REMOVED,
    noise: float = 0.01,
    softmax: bool = True,
    generator: torch.Generator | None = None,
    scores: Tensor | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Per-image ROAD: confidence change after imputing, averaged over ``removed`` shares.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        images: ``(B, C, H, W)`` images as the model takes them.
        saliency: ``(B, H, W)`` maps in ``[0, 1]`` at the images' resolution.
        targets: ``(B,)`` class indices.
        order: ``"morf"`` (most relevant first; lower is better) or ``"lerf"`` (least
            relevant first; higher is better).
        removed: shares of pixels removed, each in ``(0, 1)``.
        noise: standard deviation of the imputation noise.
        softmax: compare softmax probabilities rather than raw scores.
        generator: random source of the noise.
        scores: ``(B,)`` confidences on the clean images, when already known.
        batch_size: images per forward pass.

    Returns:
        ``(B,)`` float32 mean over ``removed`` of (imputed - clean) target confidence.

    Example:
        >>> model = camkit.testing.tiny_model()
        >>> x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
        >>> road(model, x, maps, torch.tensor([0, 1]), order="morf", removed=(0.5,)).shape
        torch.Size([2])
    """
    if scores is None:
        scores = target_scores(model, images, targets, softmax=softmax, batch_size=batch_size)
    changes = []
    for share in removed:
        imputed = noisy_linear_imputation(
            images, removal_mask(saliency, share, order), noise=noise, generator=generator
        )
        after = target_scores(model, imputed, targets, softmax=softmax, batch_size=batch_size)
        changes.append(after - scores)
    return torch.stack(changes).mean(0)


def road_combined(
    model: ModelFn,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    *,
    removed: Sequence[float] = DEFAULT_REMOVED,
    noise: float = 0.01,
    softmax: bool = True,
    generator: torch.Generator | None = None,
    scores: Tensor | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Per-image ``(LeRF - MoRF) / 2`` (higher is better); arguments as :func:`road`.

    Example:
        >>> model = camkit.testing.tiny_model()
        >>> x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
        >>> road_combined(model, x, maps, torch.tensor([0, 1]), removed=(0.5,)).shape
        torch.Size([2])
    """
    if scores is None:
        scores = target_scores(model, images, targets, softmax=softmax, batch_size=batch_size)
    either = functools.partial(
        road, model, images, saliency, targets, removed=removed, noise=noise, softmax=softmax,
        generator=generator, scores=scores, batch_size=batch_size,
    )  # fmt: skip
    return (either(order="lerf") - either(order="morf")) / 2
