"""pytorch-grad-cam's reshape transforms: token or dict outputs to ``(B, C, h, w)``.

camkit reads token ``(B, 1 + h w, D)`` and channels-last outputs itself; these transforms
shape the activations the shims' ``eigen_smooth`` and ``legacy_numerics`` read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.errors import ConfigError

__all__ = ["fasterrcnn_reshape_transform", "swinT_reshape_transform", "vit_reshape_transform"]


def vit_reshape_transform(tensor: Tensor, height: int = 14, width: int = 14) -> Tensor:
    """``(B, 1 + h w, D)`` tokens without the class token -> ``(B, D, h, w)``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import (
        ...     vit_reshape_transform,
        ... )
        >>> vit_reshape_transform(torch.zeros(2, 1 + 4, 8), 2, 2).shape
        torch.Size([2, 8, 2, 2])
    """
    return (
        tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2)).permute(0, 3, 1, 2)
    )


def swinT_reshape_transform(tensor: Tensor, height: int = 7, width: int = 7) -> Tensor:
    """``(B, h w, C)`` (or ``(B, h, w, C)``) -> ``(B, C, h, w)``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import (
        ...     swinT_reshape_transform,
        ... )
        >>> swinT_reshape_transform(torch.zeros(2, 4, 8), 2, 2).shape
        torch.Size([2, 8, 2, 2])
    """
    return tensor.reshape(tensor.size(0), height, width, tensor.size(-1)).permute(0, 3, 1, 2)


def fasterrcnn_reshape_transform(x: dict[str, Tensor]) -> Tensor:
    """A feature pyramid's levels, absolute values resized (bilinear) to the ``"pool"``
    level and concatenated along channels.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import (
        ...     fasterrcnn_reshape_transform,
        ... )
        >>> levels = {"0": torch.ones(1, 2, 8, 8), "pool": torch.ones(1, 2, 2, 2)}
        >>> fasterrcnn_reshape_transform(levels).shape
        torch.Size([1, 4, 2, 2])
    """
    if "pool" not in x:
        raise ConfigError(
            "fasterrcnn_reshape_transform resizes a pyramid's levels to its 'pool' level, and "
            f"this pyramid has none (levels {list(x)}); pass a reshape_transform for it"
        )
    size = x["pool"].shape[-2:]
    return torch.cat([F.interpolate(v.abs(), size, mode="bilinear") for v in x.values()], dim=1)
