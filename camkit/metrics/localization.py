"""Localization metrics: does a map point at the object's ground-truth box?

Boxes are ``(x0, y0, x1, y1)`` in pixels, half-open: a box covers columns ``x0 .. x1 - 1``
and rows ``y0 .. y1 - 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from camkit.errors import InputError
from camkit.metrics.checks import check_boxes, check_maps, check_non_negative


def peak(maps: Tensor) -> Tensor:
    """``(B, 2)`` long ``(row, col)`` of each ``(B, H, W)`` map's maximum.

    Ties go to the first maximum in row-major order, so the result is deterministic.
    """
    flat = maps.flatten(1).argmax(1)
    width = maps.shape[-1]
    return torch.stack([flat // width, flat % width], dim=1)


def pointing_game(maps: Tensor, boxes: Tensor, tolerance: float = 15.0) -> Tensor:
    r"""Pointing game: a hit when the map's maximum lies within ``tolerance`` of the box.

    The maximum :math:`p` of each map scores a hit when its Euclidean distance to the nearest
    pixel of the box is at most ``tolerance`` pixels; accuracy is
    :math:`\#hits / (\#hits + \#misses)`, the mean of the returned values.

    Source: Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016
    (tolerance 15 pixels on images of about 224 pixels).

    Args:
        maps: ``(B, H, W)`` saliency maps at the image's resolution.
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``.
        tolerance: in pixels.

    Returns:
        ``(B,)`` float32, 1.0 for a hit and 0.0 for a miss.
    """
    check_boxes(boxes, check_maps(maps, name="maps").shape[0])
    tolerance = check_non_negative(tolerance, "tolerance")
    rows, cols = peak(maps).T.float()
    x0, y0, x1, y1 = boxes.to(maps.device).float().T
    dx = torch.clamp(torch.maximum(x0 - cols, cols - (x1 - 1)), min=0)
    dy = torch.clamp(torch.maximum(y0 - rows, rows - (y1 - 1)), min=0)
    return (dx**2 + dy**2 <= tolerance**2).float()


def box_masks(boxes: Tensor, height: int, width: int) -> Tensor:
    """``(B, H, W)`` boolean masks of ``(B, 4)`` boxes."""
    rows = torch.arange(height, device=boxes.device)[None, :, None]
    cols = torch.arange(width, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)


def energy_pointing_game(maps: Tensor, boxes: Tensor) -> Tensor:
    r"""Energy-based pointing game: the share of the map's mass that falls inside the box.

    .. math:: \mathrm{Proportion} = \frac{\sum_{(i,j) \in bbox} L(i, j)}
                                         {\sum_{(i,j)} L(i, j)}

    Source: Wang et al., *Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks*, CVPR Workshops 2020, section 4.2.

    Args:
        maps: ``(B, H, W)`` non-negative maps at the image's resolution.
        boxes: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``.

    Returns:
        ``(B,)`` float32 proportions in ``[0, 1]``; NaN for an all-zero map, whose energy is
        undefined.
    """
    check_boxes(boxes, check_maps(maps, name="maps").shape[0])
    maps = maps.float()
    inside = (maps * box_masks(boxes.to(maps.device), *maps.shape[-2:])).sum((1, 2))
    total = maps.sum((1, 2))
    return torch.where(total > 0, inside / torch.where(total > 0, total, 1.0), torch.nan)


def centre_map(height: int, width: int, sigma: float | None = None) -> Tensor:
    """``(H, W)`` Gaussian peaked at pixel ``(H // 2, W // 2)``: the centre-bias baseline.

    A map that ignores the image and always points at its centre; a method's pointing
    accuracy means something only well above this baseline's. ``sigma`` defaults to a quarter
    of the shorter side.
    """
    sigma = sigma if sigma is not None else min(height, width) / 4
    rows = torch.arange(height, dtype=torch.float32)[:, None] - height // 2
    cols = torch.arange(width, dtype=torch.float32)[None, :] - width // 2
    return torch.exp(-(rows**2 + cols**2) / (2 * sigma**2))


def _check_regions(maps: Tensor, regions: Tensor) -> Tensor:
    maps = check_maps(maps, name="maps")
    if not isinstance(regions, Tensor) or regions.shape != maps.shape:
        got = tuple(regions.shape) if isinstance(regions, Tensor) else type(regions).__name__
        raise InputError(f"regions must be (B, H, W) like the maps {tuple(maps.shape)}, got {got}")
    return regions.to(maps.device).bool()


def mask_pointing_game(maps: Tensor, regions: Tensor, tolerance: float = 15.0) -> Tensor:
    r"""Pointing game in a ground-truth mask: a hit when the map's maximum lies within
    ``tolerance`` pixels (Euclidean) of a pixel of the region. With a box's mask it equals
    :func:`pointing_game`.

    Args:
        maps: ``(B, H, W)`` saliency maps at the image's resolution.
        regions: ``(B, H, W)`` boolean ground-truth masks.
        tolerance: in pixels.

    Returns:
        ``(B,)`` float32, 1.0 for a hit and 0.0 for a miss; NaN for an empty region.
    """
    regions = _check_regions(maps, regions)
    tolerance = check_non_negative(tolerance, "tolerance")
    points = peak(maps).float()
    out = torch.full((maps.shape[0],), torch.nan, device=maps.device)
    for i, region in enumerate(regions):
        pixels = region.nonzero().float()
        if len(pixels):
            nearest = ((pixels - points[i]) ** 2).sum(1).min()
            out[i] = float(nearest <= tolerance**2)
    return out


def mask_energy(maps: Tensor, regions: Tensor) -> Tensor:
    r"""Energy-based pointing game in a ground-truth mask: the share of the map's mass inside
    the region, :math:`\sum_{(i,j) \in M} L(i, j) / \sum_{(i,j)} L(i, j)`. With a box's mask
    it equals :func:`energy_pointing_game`.

    Returns:
        ``(B,)`` float32 proportions in ``[0, 1]``; NaN for an all-zero map or an empty region.
    """
    regions = _check_regions(maps, regions)
    maps = maps.float()
    inside = (maps * regions).sum((1, 2))
    total = maps.sum((1, 2))
    valid = (total > 0) & regions.flatten(1).any(1)
    return torch.where(valid, inside / torch.where(total > 0, total, 1.0), torch.nan)
