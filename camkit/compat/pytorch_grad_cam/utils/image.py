"""pytorch-grad-cam's image helpers, on PIL, NumPy and torch (no OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

import camkit
from camkit.errors import InputError

__all__ = [
    "deprocess_image",
    "preprocess_image",
    "scale_accross_batch_and_channels",
    "scale_cam_image",
    "show_cam_on_image",
]

#: OpenCV's ``COLORMAP_JET``, the value the original's ``colormap`` argument defaults to.
COLORMAP_JET = 2


def preprocess_image(
    img: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)
) -> torch.Tensor:
    """``(H, W, C)`` image (uint8, or floats used as they are) -> normalized ``(1, C, H, W)``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.image import preprocess_image
        >>> preprocess_image(np.full((2, 2, 3), 255, np.uint8)).flatten()[0]
        tensor(1.)
    """
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    x = x.float().div(255) if x.dtype == torch.uint8 else x
    mean_t = torch.as_tensor(mean, dtype=x.dtype)[:, None, None]
    std_t = torch.as_tensor(std, dtype=x.dtype)[:, None, None]
    return ((x - mean_t) / std_t).unsqueeze(0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """Standardize, scale to a standard deviation of 0.1 around 0.5, clip, as uint8.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.image import deprocess_image
        >>> deprocess_image(np.zeros((2, 2, 3))).max()
        np.uint8(127)
    """
    img = (img - np.mean(img)) / (np.std(img) + 1e-5)
    return np.uint8(np.clip(img * 0.1 + 0.5, 0, 1) * 255)


def show_cam_on_image(
    img: np.ndarray,
    mask: np.ndarray,
    use_rgb: bool = False,
    colormap: int = COLORMAP_JET,
    image_weight: float = 0.5,
) -> np.ndarray:
    """Blend a jet heatmap of ``mask`` over ``img``: ``(1 - w) heatmap + w img``, scaled so
    its maximum is 255, as uint8. The heatmap is camkit's jet (a few levels from OpenCV's),
    in BGR order unless ``use_rgb``.

    Args:
        img: ``(H, W, 3)`` float image in ``[0, 1]``.
        mask: ``(H, W)`` map in ``[0, 1]``.
        use_rgb: return RGB (set it when ``img`` is RGB).
        colormap: only jet (OpenCV's ``COLORMAP_JET``, 2) is available.
        image_weight: ``w``, in ``[0, 1]``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.image import show_cam_on_image
        >>> show_cam_on_image(np.zeros((4, 4, 3), np.float32), np.ones((4, 4))).shape
        (4, 4, 3)
    """
    if colormap != COLORMAP_JET:
        raise InputError(f"colormap {colormap}: camkit's shim draws jet (OpenCV's 2) only")
    if np.max(img) > 1:
        raise InputError("the input image should be np.float32 in the range [0, 1]")
    if not 0 <= image_weight <= 1:
        raise InputError(f"image_weight should be in the range [0, 1], got {image_weight}")
    black = np.zeros((*np.shape(mask), 3), np.float32)
    heatmap = np.asarray(camkit.overlay(black, np.asarray(mask), alpha=1.0, cmap="jet"))
    if not use_rgb:
        heatmap = heatmap[..., ::-1]
    cam = (1 - image_weight) * (np.float32(heatmap) / 255) + image_weight * img
    return np.uint8(255 * cam / np.max(cam))


def scale_cam_image(
    cam: np.ndarray | Sequence[np.ndarray], target_size: Sequence[int] | None = None
) -> np.ndarray:
    """Each map ``(m - min) / (max(m - min) + 1e-7)``, resized (bilinear, or trilinear for
    volumes) to ``target_size`` given as ``(W, H)`` (``(D, W, H)`` for volumes).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.image import scale_cam_image
        >>> scale_cam_image(np.arange(4.0).reshape(1, 2, 2), (4, 4)).shape
        (1, 4, 4)
    """
    maps = torch.from_numpy(np.asarray(cam, dtype=np.float32))
    flat = maps.flatten(1)
    flat = flat - flat.amin(1, keepdim=True)
    maps = (flat / (flat.amax(1, keepdim=True) + 1e-7)).view(maps.shape)
    if target_size is not None:
        size = tuple(int(s) for s in target_size[::-1])
        mode = "bilinear" if len(size) == 2 else "trilinear"
        maps = F.interpolate(maps[:, None], size, mode=mode, align_corners=False)[:, 0]
    return maps.numpy().astype(np.float32)


def scale_accross_batch_and_channels(tensor: np.ndarray, target_size: Sequence[int]) -> np.ndarray:
    """:func:`scale_cam_image` over every ``(B, C)`` map of a ``(B, C, h, w)`` array.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.image import scale_accross_batch_and_channels
        >>> scale_accross_batch_and_channels(np.ones((2, 3, 2, 2)), (4, 4)).shape
        (2, 3, 4, 4)
    """
    batch, channels = tensor.shape[:2]
    scaled = scale_cam_image(tensor.reshape(batch * channels, *tensor.shape[2:]), target_size)
    return scaled.reshape(batch, channels, target_size[1], target_size[0])


def __getattr__(name: str) -> object:
    """The Deep Feature Factorization drawing helpers, at the original's path (loaded on use:
    they live in :mod:`camkit.compat.pytorch_grad_cam.feature_factorization`)."""
    if name in ("create_labels_legend", "show_factorization_on_image"):
        from camkit.compat.pytorch_grad_cam import feature_factorization

        return getattr(feature_factorization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
