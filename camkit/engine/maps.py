"""Map arithmetic shared by every method: weighted sums, normalization, resizing, fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.errors import CamkitError


def normalize(maps: Tensor, spatial_dims: int = 2) -> Tensor:
    """Min-max normalize each map over its last ``spatial_dims`` dimensions.

    ``(m - min) / (max - min)`` per map; a constant map becomes all zeros, never NaN.
    """
    flat = maps.flatten(-spatial_dims)
    lo = flat.amin(-1).reshape(*flat.shape[:-1], *([1] * spatial_dims))
    hi = flat.amax(-1).reshape(*flat.shape[:-1], *([1] * spatial_dims))
    span = hi - lo
    return (maps - lo) / torch.where(span > 0, span, torch.ones_like(span))


def resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``(N, h, w)`` or ``(N, t, h, w)`` maps to ``size`` (bilinear or trilinear)."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k`` for channel weights ``(B, C)`` or pixel weights ``(B, C, h, w)``.

    Returns ``(B, h, w)``.
    """
    if weights.dim() == 2:
        return torch.einsum("bc,bc...->b...", weights.to(activations.dtype), activations)
    return (weights * activations).sum(1)


def fuse(maps: Sequence[Tensor], size: Sequence[int] | None = None) -> Tensor:
    """Fuse maps of several layers: normalize each, resize to a common size, take the max.

    Args:
        maps: ``(B, h_i, w_i)`` maps (or ``(B, t_i, h_i, w_i)``), one per layer.
        size: the output's spatial size; by default the largest of the inputs' sizes.

    Returns:
        ``(B, *size)`` float32 maps in ``[0, 1]``.
    """
    maps = list(maps)
    if not maps or not all(isinstance(m, Tensor) for m in maps):
        raise CamkitError("fuse() needs a non-empty list of map tensors")
    spatial = {m.dim() - 1 for m in maps}
    if len(spatial) != 1 or len({m.shape[0] for m in maps}) != 1:
        shapes = [tuple(m.shape) for m in maps]
        raise CamkitError(f"fuse() needs maps of one batch size and rank, got shapes {shapes}")
    dims = spatial.pop()
    if size is None:
        size = [max(m.shape[1 + d] for m in maps) for d in range(dims)]
    fused = [resize(normalize(m.float(), dims), size) for m in maps]
    return fused[0] if len(fused) == 1 else torch.stack(fused).amax(0)
