"""Colormaps and overlays: turning maps into pictures."""

from __future__ import annotations

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


def to_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, a ``(C, H, W)`` tensor or an ``(H, W, C)`` array.

    Float tensors and arrays are read as values in ``[0, 1]`` (clipped).
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3:
            raise InputError(f"an image tensor must be (C, H, W), got shape {tuple(t.shape)}")
        array = t.permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise InputError(f"an image must be (H, W, C), got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array[..., :3])


def overlay(
    image: Any, cam: Tensor | np.ndarray, alpha: float = 0.5, cmap: str = "jet"
) -> Image.Image:
    """Blend a colour-mapped CAM over an image.

    Args:
        image: PIL image, ``(C, H, W)`` tensor or ``(H, W, C)`` array (floats in ``[0, 1]``).
        cam: ``(h, w)`` map in ``[0, 1]``; resized (bilinear) to the image.
        alpha: weight of the heatmap in the blend.
        cmap: ``"jet"``, ``"viridis"``, ``"cividis"`` or ``"gray"``.
    """
    base = to_pil(image)
    values = torch.as_tensor(np.asarray(cam) if not isinstance(cam, Tensor) else cam)
    if values.dim() != 2:
        raise InputError(f"overlay() needs one (h, w) map, got shape {tuple(values.shape)}")
    values = resize(values.detach().float().cpu()[None], (base.height, base.width))[0]
    heat = Image.fromarray(colormap(values.numpy(), cmap))
    return Image.blend(base, heat, alpha)
