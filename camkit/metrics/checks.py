"""Argument checks shared by the metrics: the same typed errors the extractors raise.

A wrong tensor is an :class:`~camkit.errors.InputError`, wrong targets a
:class:`~camkit.errors.TargetError`, a model whose output does not match the images a
:class:`~camkit.errors.ModelOutputError`, and a wrong number (``step``, ``tolerance``) a
:class:`~camkit.errors.ConfigError`; every message names the argument and what was given.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from camkit.errors import ConfigError, InputError, ModelOutputError, TargetError


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def check_images(images: Any, name: str = "images") -> Tensor:
    """``images`` as a non-empty ``(B, C, H, W)`` floating-point tensor.

    Example:
        >>> check_images(torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    if not isinstance(images, Tensor):
        raise InputError(f"{name} must be a (B, C, H, W) tensor, not {type(images).__name__}")
    if images.dim() != 4 or images.numel() == 0:
        raise InputError(f"{name} must be non-empty (B, C, H, W) images, got {_shape(images)}")
    if not images.is_floating_point():
        raise InputError(f"{name} must be floating point, got {images.dtype}")
    return images


def check_maps(maps: Any, images: Tensor | None = None, name: str = "saliency") -> Tensor:
    """``maps`` as ``(B, H, W)``, matching ``images``' batch and size when given.

    Example:
        >>> check_maps(torch.rand(2, 8, 8), torch.rand(2, 3, 8, 8)).shape
        torch.Size([2, 8, 8])
    """
    if not isinstance(maps, Tensor) or maps.dim() != 3 or maps.numel() == 0:
        raise InputError(f"{name} must be non-empty (B, H, W) maps, got {_shape(maps)}")
    if images is not None and (
        maps.shape[0] != images.shape[0] or maps.shape[1:] != images.shape[2:]
    ):
        raise InputError(
            f"{name} of shape {_shape(maps)} do not match images of shape {_shape(images)}: "
            "expected one (H, W) map per image at the image's resolution"
        )
    return maps


def check_targets(targets: Any, count: int, name: str = "targets") -> Tensor:
    """``targets`` as a ``(count,)`` integer tensor (class indices, one per image).

    Example:
        >>> check_targets(torch.tensor([0, 3]), 2)
        tensor([0, 3])
    """
    if not isinstance(targets, Tensor):
        raise TargetError(
            f"{name} must be a (B,) tensor of class indices, not {type(targets).__name__}; "
            "use torch.tensor([...])"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TargetError(f"{name} must hold integer class indices, got {targets.dtype}")
    if targets.shape != (count,):
        raise TargetError(f"{name} must be ({count},), one class per image, got {_shape(targets)}")
    return targets


def check_classes(targets: Tensor, scores: Tensor, images: int) -> None:
    """Model ``scores`` hold one ``(num_classes,)`` row per image, and ``targets`` index them.

    Example:
        >>> check_classes(torch.tensor([0, 4]), torch.zeros(2, 5), images=2)  # fine
    """
    if scores.dim() != 2 or scores.shape[0] != images:
        raise ModelOutputError(
            f"the model returned scores of shape {_shape(scores)} for {images} images; "
            "expected (B, num_classes), one row per image"
        )
    classes = scores.shape[1]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= classes):
        raise TargetError(
            f"targets must be class indices in 0..{classes - 1}, got "
            f"{int(targets.min())}..{int(targets.max())}"
        )


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int of at least 1 (``bool`` and fractions refused).

    Example:
        >>> check_positive_int(8, "step")
        8
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r:.100}")
    return value


def check_non_negative(value: Any, name: str) -> float:
    """``value`` as a finite number of at least 0 (``bool`` refused).

    Example:
        >>> check_non_negative(15, "tolerance")
        15.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r:.100}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_substrate(substrate: Any, images: Tensor) -> None:
    """``"zeros"``, ``"blur"``, or a tensor that broadcasts to ``images``' shape.

    Example:
        >>> check_substrate(torch.zeros(1, 3, 8, 8), torch.rand(2, 3, 8, 8))  # fine
    """
    if isinstance(substrate, Tensor):
        try:
            fits = torch.broadcast_shapes(substrate.shape, images.shape) == images.shape
        except RuntimeError:
            fits = False
        if not fits or not substrate.is_floating_point():
            raise InputError(
                f"substrate of shape {_shape(substrate)} ({substrate.dtype}) does not fit "
                f"images of shape {_shape(images)}; expected floating point (B, C, H, W) or a "
                "shape that broadcasts to it"
            )
    elif not isinstance(substrate, str) or substrate not in ("zeros", "blur"):
        raise ConfigError(
            f"substrate must be 'zeros', 'blur' or a tensor of images, got {substrate!r:.100}"
        )


def check_same_shape(first: Any, second: Any, names: tuple[str, str]) -> None:
    """Two ``(B,)`` tensors of one shape.

    Example:
        >>> check_same_shape(torch.ones(2), torch.zeros(2), ("scores", "explanation_scores"))
    """
    if not (isinstance(first, Tensor) and isinstance(second, Tensor)) or (
        first.dim() != 1 or first.shape != second.shape
    ):
        raise InputError(
            f"{names[0]} and {names[1]} must be (B,) tensors of one shape, got "
            f"{_shape(first)} and {_shape(second)}"
        )


def check_boxes(boxes: Any, count: int) -> Tensor:
    """``boxes`` as ``(count, 4)`` integer ``(x0, y0, x1, y1)`` boxes.

    Example:
        >>> check_boxes(torch.tensor([[0, 0, 4, 4]]), 1)
        tensor([[0, 0, 4, 4]])
    """
    if not isinstance(boxes, Tensor) or boxes.shape != (count, 4):
        raise InputError(f"boxes must be ({count}, 4) (x0, y0, x1, y1), got {_shape(boxes)}")
    if boxes.is_floating_point() and not bool((boxes == boxes.round()).all()):
        raise InputError("boxes must hold whole pixel coordinates")
    return boxes
