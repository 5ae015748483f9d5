"""Colormaps and overlays: turning maps into pictures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camkit.engine.maps import resize
from camkit.errors import InputError

# Anchor colours at 0, 0.1, ..., 1, interpolated linearly.
_VIRIDIS = [
    "440154", "482475", "414487", "355f8d", "2a788e", "21918c",
    "22a884", "44bf70", "7ad151", "bddf26", "fde725",
]  # fmt: skip
# Cividis (Nuñez et al., PLOS ONE 2018): readable with red-green colour blindness, and its
# lightness rises evenly, so it reads right in greyscale too.
_CIVIDIS = [
    "00224e", "083370", "35456c", "4f576c", "666970", "7d7c78",
    "948e77", "aea371", "c8b866", "e5cf52", "fee838",
]  # fmt: skip
_ANCHORED = {"viridis": _VIRIDIS, "cividis": _CIVIDIS}


def colormap(values: np.ndarray, name: str = "jet") -> np.ndarray:
    """Map values in ``[0, 1]`` of shape ``(H, W)`` to ``(H, W, 3)`` uint8 RGB."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0.0, 1.0)
    if name == "jet":
        rgb = np.stack([np.clip(1.5 - np.abs(4 * v - k), 0, 1) for k in (3, 2, 1)], axis=-1)
    elif name in _ANCHORED:
        anchors = np.array([[int(c[i : i + 2], 16) for i in (0, 2, 4)] for c in _ANCHORED[name]])
        anchors = anchors / 255
        grid = np.linspace(0, 1, len(anchors))
        rgb = np.stack([np.interp(v, grid, anchors[:, i]) for i in range(3)], axis=-1)
    elif name == "gray":
        rgb = np.repeat(v[..., None], 3, axis=-1)
    else:
        raise InputError(f"unknown colormap {name!r}; choose 'jet', 'viridis', 'cividis' or 'gray'")
    return (rgb * 255 + 0.5).astype(np.uint8)


def check_colormap(name: str) -> None:
    """Raise :class:`~camkit.errors.InputError` unless ``name`` is a known colormap.

    Example:
        >>> check_colormap("viridis")
    """
    if not isinstance(name, str):
        raise InputError(f"a colormap is named by a string, not {type(name).__name__}")
    colormap(np.zeros((1, 1), dtype=np.float32), name)


#: How far outside [0, 1] float pixels may stray (resampling, float rounding) before an image
#: counts as not in [0, 1]; normalized images span about [-2.1, 2.6].
_SLACK = 0.02


def to_pil(
    image: Any,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Image.Image:
    """A PIL RGB image from a PIL image, a ``(C, H, W)`` tensor or an ``(H, W, C)`` array.

    uint8 values are pixels (0-255), uint16 ones are scaled from 0-65535; floats are read as
    values in ``[0, 1]``, or, with ``mean`` and ``std``, as ``(x - mean) / std`` normalized
    values, which are un-normalized first. Float values clearly outside ``[0, 1]`` are an
    :class:`~camkit.errors.InputError` (they would be clipped into a distorted picture).

    Example:
        >>> to_pil(torch.zeros(3, 2, 4)).size
        (4, 2)
    """
    if isinstance(image, Image.Image):
        if mean is not None or std is not None:
            raise InputError("mean/std apply to normalized tensors or arrays, not PIL images")
        return image.convert("RGB")
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3:
            raise InputError(f"an image tensor must be (C, H, W), got shape {tuple(t.shape)}")
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        array = t.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InputError(
            "an image is a PIL image, a (C, H, W) tensor or an (H, W, C) array, not "
            f"{type(image).__name__}"
        )
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"an image must be (H, W, C) or a (C, H, W) tensor with 1, 3 or 4 channels, got "
            f"shape {array.shape}"
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return Image.fromarray(_to_uint8(array[..., :3], mean, std))


def _to_uint8(
    array: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    if (mean is None) != (std is None):
        raise InputError("give both mean and std to un-normalize an image, or neither")
    if array.dtype == np.uint8 and mean is None:
        return array
    if array.dtype == np.uint16 and mean is None:
        return (array.astype(np.float32) / 257 + 0.5).astype(np.uint8)
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise InputError(f"image values must be numbers, not {array.dtype}")
    values = array.astype(np.float32)
    if mean is not None and std is not None:
        values = values * _channels(std, "std") + _channels(mean, "mean")
    elif array.dtype.kind in "iu":
        raise InputError(
            f"an integer image must be uint8 (0-255) or uint16, not {array.dtype}; convert it, "
            "or pass floats in [0, 1]"
        )
    if not np.isfinite(values).all():
        raise InputError("the image contains NaN or Inf values")
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < -_SLACK or high > 1 + _SLACK:
        hint = (
            "the mean/std given do not un-normalize it"
            if mean is not None
            else "it looks normalized: pass mean=... and std=... (e.g. the model's "
            "preprocessing), or the image in [0, 1]"
        )
        raise InputError(
            f"image values span [{low:.3g}, {high:.3g}], not [0, 1]; {hint} so it is shown "
            "undistorted"
        )
    return (np.clip(values, 0, 1) * 255 + 0.5).astype(np.uint8)


def _channels(values: Sequence[float], what: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in values], dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be three numbers, got {values!r}") from None
    if array.shape != (3,) or not np.isfinite(array).all() or (what == "std" and array.min() <= 0):
        raise InputError(f"{what} must be three finite numbers (std > 0), got {values!r}")
    return array


def overlay(
    image: Any,
    cam: Tensor | np.ndarray,
    alpha: float = 0.5,
    cmap: str = "jet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    preprocessing: Any = None,
) -> Image.Image:
    """Blend a colour-mapped CAM over an image, at the image's size.

    Args:
        image: PIL image, ``(C, H, W)`` tensor or ``(H, W, C)`` array: uint8 pixels, floats in
            ``[0, 1]``, or normalized floats when ``mean`` and ``std`` are given.
        cam: ``(h, w)`` map in ``[0, 1]``; resized (bilinear) to the image.
        alpha: weight of the heatmap in the blend, in ``[0, 1]``.
        cmap: ``"jet"``, ``"viridis"``, ``"cividis"`` or ``"gray"``.
        mean, std: the normalization ``image`` went through, ``(x - mean) / std``.
        preprocessing: anything with ``mean`` and ``std`` attributes (e.g. the
            ``preprocessing`` of a loaded model), instead of ``mean`` and ``std``.

    Example:
        >>> image = torch.rand(3, 32, 48)
        >>> overlay(image, torch.rand(8, 12), alpha=0.4).size
        (48, 32)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InputError(f"alpha must be a number in [0, 1], not {type(alpha).__name__}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    check_colormap(cmap)
    if preprocessing is not None:
        if mean is not None or std is not None:
            raise InputError("give preprocessing or mean/std, not both")
        mean, std = preprocessing.mean, preprocessing.std
    base = to_pil(image, mean, std)
    if not isinstance(cam, (Tensor, np.ndarray)):
        raise InputError(f"cam must be a tensor or an array, not {type(cam).__name__}")
    values = torch.as_tensor(np.asarray(cam) if not isinstance(cam, Tensor) else cam)
    if values.dim() != 2:
        raise InputError(f"overlay() needs one (h, w) map, got shape {tuple(values.shape)}")
    if values.is_complex() or values.dtype == torch.bool:
        raise InputError(f"the map must hold real numbers, not {values.dtype}")
    values = resize(values.detach().float().cpu()[None], (base.height, base.width))[0]
    heat = Image.fromarray(colormap(values.numpy(), cmap))
    return Image.blend(base, heat, float(alpha))
