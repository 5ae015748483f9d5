"""Map arithmetic shared by every method: weighted sums, resizing, fusion (min-max
normalization is the contract's :func:`camkit.minmax_normalize`, which methods use too)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.errors import InputError
from camkit.method import minmax_normalize


def resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resize ``(N, h, w)`` or ``(N, t, h, w)`` maps to ``size`` (bilinear or trilinear).

    The same values as ``F.interpolate(..., align_corners=False)``, to float rounding. 2-D
    maps are resized as ``Wy @ m @ Wx^T``: bilinear interpolation is separable, and two small
    matrix products cost a fraction of the general kernel when maps grow 32-fold.
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[1:]) == size:
        return maps
    if len(size) == 2 and maps.dim() == 3 and maps.is_floating_point():
        rows = interpolation_matrix(maps.shape[1], size[0], maps.dtype, maps.device)
        cols = interpolation_matrix(maps.shape[2], size[1], maps.dtype, maps.device)
        if maps.shape[0] == 1:  # plain matrix products: the fewest kernels for one map
            return torch.mm(rows, torch.mm(maps[0], cols.T)).unsqueeze(0)
        return rows @ (maps @ cols.T)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)


@lru_cache(maxsize=64)
def interpolation_matrix(
    size_in: int, size_out: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``(size_out, size_in)``: linear interpolation (``align_corners=False``) as a matrix.

    Built by interpolating the identity with torch's own kernel, so the weights are exactly
    the ones ``F.interpolate`` uses along each axis.
    """
    eye = torch.eye(size_in, dtype=dtype, device=device).unsqueeze(0)
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[0].T.contiguous()


def weighted_sum(weights: Tensor, activations: Tensor) -> Tensor:
    """``sum_k w_k A_k`` for channel weights ``(B, C)`` or pixel weights ``(B, C, h, w)``.

    Returns ``(B, h, w)``.
    """
    if weights.dim() == 2:
        # One batched product (B, 1, C) @ (B, C, h*w): no (B, C, h, w) temporary.
        flat = activations.flatten(2)
        if weights.dtype != flat.dtype:
            weights = weights.to(flat.dtype)
        if flat.shape[0] == 1:
            out = torch.mm(weights, flat[0])
        else:
            out = torch.bmm(weights.unsqueeze(1), flat)
        return out.view(activations.shape[0], *activations.shape[2:])
    return (weights * activations).sum(1)


def fuse(maps: Sequence[Tensor], size: Sequence[int] | None = None) -> Tensor:
    """Fuse maps of several layers: normalize each, resize to a common size, take the max.

    Args:
        maps: a list of ``(B, h_i, w_i)`` maps (or ``(B, t_i, h_i, w_i)``), one per layer,
            finite floats.
        size: the output's spatial size; by default the largest of the inputs' sizes.

    Returns:
        ``(B, *size)`` float32 maps in ``[0, 1]``.

    Raises:
        InputError: anything else (a bare tensor instead of a list, maps of different batch
            sizes or ranks, non-finite values, a bad ``size``), saying what was given.

    Example:
        >>> res = camkit.create("gradcam", model, ["layer3", "layer4"])(images)
        >>> fused = camkit.fuse([res.layer_maps["layer3"], res.layer_maps["layer4"]])
    """
    dims = _checked_maps(maps)
    if size is None:
        size = [max(m.shape[1 + d] for m in maps) for d in range(dims)]
    elif not (
        isinstance(size, Sequence)
        and len(size) == dims
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise InputError(f"fuse() needs size=None or {dims} positive ints, got {size!r}")
    return fused(maps, size)


def fused(maps: Sequence[Tensor], size: Sequence[int]) -> Tensor:
    """:func:`fuse` of maps the engine has checked already (finite, one batch size and rank,
    ``size`` their spatial rank)."""
    dims = len(size)
    out = [resize(minmax_normalize(m.float(), dims), size) for m in maps]
    top = out[0] if len(out) == 1 else torch.stack(out).amax(0)
    # Interpolation weights sum to one only to float rounding; ``top`` is a new tensor.
    return top.clamp_(max=1.0)


def _checked_maps(maps: object) -> int:
    """The spatial rank of a valid list of maps for :func:`fuse` (else an InputError)."""
    if isinstance(maps, Tensor):
        raise InputError(
            f"fuse() takes a list of maps, one (B, h, w) tensor per layer, not one tensor (got "
            f"shape {tuple(maps.shape)}); pass [maps] to fuse a single map"
        )
    if not isinstance(maps, Sequence) or not maps or not all(isinstance(m, Tensor) for m in maps):
        raise InputError("fuse() needs a non-empty list of map tensors")
    shapes = [tuple(m.shape) for m in maps]
    spatial = {m.dim() - 1 for m in maps}
    if len(spatial) != 1 or len({m.shape[0] for m in maps}) != 1:
        raise InputError(f"fuse() needs maps of one batch size and rank, got shapes {shapes}")
    dims = spatial.pop()
    if dims not in (2, 3) or any(m.numel() == 0 for m in maps):
        raise InputError(f"fuse() needs non-empty (B, h, w) or (B, t, h, w) maps, got {shapes}")
    if not all(m.is_floating_point() for m in maps):
        raise InputError(f"fuse() needs floating-point maps, got {[m.dtype for m in maps]}")
    if not all(bool(torch.isfinite(m).all()) for m in maps):
        raise InputError("fuse() was given maps with NaN or Inf values")
    return dims
