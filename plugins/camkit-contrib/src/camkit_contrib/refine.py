"""RefineCAM: fuse the maps of several layers by their product instead of their maximum."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import camkit
from camkit.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor


def refine(maps: Iterable[Tensor], size: Sequence[int] | None = None) -> Tensor:
    r"""RefineCAM: normalize each layer's map, resize them to one size, multiply, normalize.

    .. math::

        L_{RefineCAM} = \mathcal{N}\Big(\prod_{l} U\big(\mathcal{N}(L_l)\big)\Big)

    where :math:`L_l` is the map of layer :math:`l`, :math:`\mathcal{N}` per-map min-max
    normalization and :math:`U` bilinear (trilinear for ``(B, t, h, w)``) resizing with
    ``align_corners=False``. A location stays salient only where every layer agrees, so the
    coarse deep layers denoise the fine early ones. Use it on the ``layer_maps`` of a
    multi-layer extractor (:func:`camkit.fuse` is the element-wise maximum instead).

    Paper: *How to Evaluate and Refine your CAM*, arXiv:2605.14641, 2026.

    Args:
        maps: ``(B, h_l, w_l)`` (or ``(B, t_l, h_l, w_l)``) maps, one per layer.
        size: the output's spatial size; by default the largest of the inputs'.

    Returns:
        ``(B, *size)`` float32 maps in ``[0, 1]``.

    Raises:
        InputError: for no maps, or maps of different batch sizes or ranks.

    Example:
        >>> cam = camkit.create("layercam", camkit.testing.tiny_model(), ["features.0", "features"])
        >>> res = cam(camkit.testing.tiny_inputs(2))
        >>> refine(res.layer_maps.values(), size=(16, 16)).shape
        torch.Size([2, 16, 16])
    """
    import torch
    import torch.nn.functional as F

    maps = list(maps)
    if not maps or not all(isinstance(m, torch.Tensor) for m in maps):
        raise InputError("refine() needs a non-empty list of map tensors")
    if len({m.dim() for m in maps}) != 1 or len({m.shape[0] for m in maps}) != 1:
        shapes = [tuple(m.shape) for m in maps]
        raise InputError(f"refine() needs maps of one batch size and rank, got shapes {shapes}")
    dims = maps[0].dim() - 1
    if dims not in (2, 3):
        raise InputError(f"refine() needs (B, h, w) or (B, t, h, w) maps, got {dims + 1} dims")
    if size is None:
        size = [max(m.shape[1 + d] for m in maps) for d in range(dims)]
    mode = "bilinear" if dims == 2 else "trilinear"
    product = torch.ones(maps[0].shape[0], *size, device=maps[0].device)
    for layer_map in maps:
        normalized = camkit.minmax_normalize(layer_map.float(), dims)
        resized = F.interpolate(
            normalized[:, None], size=tuple(size), mode=mode, align_corners=False
        )
        product = product * resized[:, 0]
    return camkit.minmax_normalize(product, dims)
