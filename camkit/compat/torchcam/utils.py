"""torchcam 0.5.0's ``torchcam.utils``: overlays drawn by :func:`camkit.overlay`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

import camkit
from camkit.compat._shared import CompatTypeError
from camkit.errors import InputError
from camkit.viz import check_colormap
from camkit.viz import colormap as colormap_of

__all__ = ["overlay_mask"]


def overlay_mask(
    img: Image.Image, mask: Image.Image, colormap: Any = "jet", alpha: float = 0.7
) -> Image.Image:
    """Overlay a colour-mapped mask on a background image, as torchcam does.

    The mask is resized to the image (bicubic) and squared before colour mapping; the result
    is ``alpha * img + (1 - alpha) * heatmap``. Named colormaps (``"jet"``, ``"viridis"``,
    ``"gray"``) are camkit's, so colours differ from matplotlib's by a few levels; a callable
    colormap (e.g. a matplotlib ``Colormap``) is applied as torchcam applies it.

    Args:
        img: background image (grayscale or RGB).
        mask: ``(h, w)`` grayscale mask in ``[0, 1]`` (e.g. mode ``"F"``).
        colormap: a colormap name or a callable ``cmap(values, bytes=True)``.
        alpha: weight of the background, in ``[0, 1)``. A NaN passes the range check, as in
            torchcam: the blend is then NaN and NumPy's cast of it to uint8 warns
            (``RuntimeWarning``), as torchcam's does; the pixels are the same as torchcam's.

    Returns:
        the RGB overlay, of ``img``'s size.

    Example:
        >>> from camkit.compat.torchcam.utils import overlay_mask
        >>> from PIL import Image
        >>> img = Image.new("RGB", (32, 32))
        >>> mask = Image.fromarray(np.random.rand(7, 7).astype(np.float32), mode="F")
        >>> overlay_mask(img, mask).size
        (32, 32)
    """
    if not isinstance(img, Image.Image) or not isinstance(mask, Image.Image):
        raise CompatTypeError("img and mask arguments need to be PIL.Image")
    if not isinstance(alpha, float) or alpha < 0 or alpha >= 1:
        raise InputError(
            f"alpha argument is expected to be of type float between 0 and 1, got {alpha!r}"
        )
    if len(img.getbands()) not in {1, 3}:
        raise InputError(f"img must be a grayscale or RGB image, got mode {img.mode!r}")
    # Squared in the mask's own dtype, as torchcam does (uint8 masks wrap around).
    values = np.asarray(mask.resize(img.size, resample=Image.Resampling.BICUBIC)) ** 2
    # The background's raw bands, as torchcam reads them ("P" indices, "HSV" values).
    raw = np.asarray(img)
    if raw.dtype == np.uint8:
        img = Image.fromarray(raw if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=-1))
    if callable(colormap):
        heat = colormap(values, bytes=True)[:, :, :3]
    else:
        check_colormap(colormap)
        if not np.issubdtype(values.dtype, np.floating):
            values = values / 255  # integer masks index a 256-colour table in torchcam
        heat = None
    if math.isnan(alpha):
        # torchcam's arithmetic blend, kept for a NaN alpha: NumPy warns (RuntimeWarning) as
        # it casts the NaN pixels to uint8, and the pixels are the platform's cast of NaN.
        if heat is None:
            heat = colormap_of(values, colormap)
        background = np.asarray(img)
        if background.ndim == 2:
            background = np.repeat(background[..., None], 3, axis=-1)
        return Image.fromarray((alpha * background + (1 - alpha) * heat).astype(np.uint8))
    if heat is not None:
        return Image.blend(Image.fromarray(heat), img.convert("RGB"), alpha)
    return camkit.overlay(img, values.astype(np.float32), alpha=1 - alpha, cmap=colormap)
