"""``camkit:shapes``: a deterministic synthetic image set with a ground-truth box per image.

Every image shows one shape — a circle, a square, a triangle or a cross — of random size,
colour and position on a cluttered, noisy background (a colour gradient, thin lines and
small dots). Image ``i`` of seed ``s`` is drawn from its own random stream ``(s, i)``, so
any image can be regenerated alone, in any order, on any process, without files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

#: The class names, in label order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross")


@dataclass(frozen=True)
class ShapeSample:
    """One generated image.

    Attributes:
        image: ``(3, H, W)`` float32 RGB values in ``[0, 1]``.
        label: the shape's class index into :data:`CLASSES`.
        box: ``(x0, y0, x1, y1)`` tight bounding box of the shape in pixels, half-open
            (``x0 <= x < x1``).
        mask: ``(H, W)`` boolean mask of the shape's pixels.
    """

    image: np.ndarray
    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None


def shape_mask(label: int, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """``(size, size)`` boolean mask of shape ``label`` centred at ``(cx, cy)``.

    ``radius`` is half the shape's extent: the circle's radius, the square's half side, the
    triangle's half base and half height, the cross's half arm length (arms are a third as
    thick as they are long).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xs - cx, ys - cy
    if label == 0:
        return dx**2 + dy**2 <= radius**2
    if label == 1:
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if label == 2:
        # apex at the top, base at the bottom: inside when below both slanted edges
        return (dy <= radius) & (2 * np.abs(dx) <= dy + radius)
    if label == 3:
        arm = radius / 3
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | (
            (np.abs(dy) <= arm) & (np.abs(dx) <= radius)
        )
    raise ValueError(f"shape label must be in [0, {len(CLASSES) - 1}], got {label}")


def render(seed: int, index: int, size: int = 64) -> ShapeSample:
    """Generate image ``index`` of the set with ``seed`` at ``size`` x ``size`` pixels."""
    rng = np.random.default_rng([seed, index])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # background: a random colour with a random linear gradient
    base = rng.uniform(0.05, 0.55, size=3).astype(np.float32)
    slope = rng.uniform(-0.25, 0.25, size=(3, 2)).astype(np.float32)
    image = base[:, None, None] + slope[:, :1, None] * xs + slope[:, 1:, None] * ys
    for _ in range(int(rng.integers(6, 12))):
        colour = rng.uniform(0, 1, size=3).astype(np.float32)
        if rng.random() < 0.5:
            x0, y0, x1, y1 = rng.uniform(0, 1, size=4) * size
            clutter = _segment(x0, y0, x1, y1, size)
        else:
            cx, cy = rng.uniform(0, size, size=2)
            clutter = shape_mask(0, cx, cy, rng.uniform(1.0, 2.5), size)
        image[:, clutter] = colour[:, None]
    label = int(rng.integers(len(CLASSES)))
    radius = rng.uniform(0.11, 0.23) * size
    cx, cy = rng.uniform(radius + 1, size - radius - 1, size=2)
    colour = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
    mask = shape_mask(label, cx, cy, radius, size)
    image[:, mask] = colour[:, None]
    image = image + rng.normal(0, 0.06, size=image.shape).astype(np.float32)
    rows, cols = np.nonzero(mask)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    return ShapeSample(np.clip(image, 0, 1).astype(np.float32), label, box, mask)


def _segment(x0: float, y0: float, x1: float, y1: float, size: int) -> np.ndarray:
    """Mask of a one-pixel-wide line segment between two points."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    px, py = x1 - x0, y1 - y0
    length2 = max(px * px + py * py, 1e-6)
    t = np.clip(((xs - x0) * px + (ys - y0) * py) / length2, 0, 1)
    return (xs - x0 - t * px) ** 2 + (ys - y0 - t * py) ** 2 <= 0.6**2


def generate(
    count: int, seed: int = 0, size: int = 64, start: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Images ``start .. start + count - 1`` of the set as tensors.

    Returns:
        ``(N, 3, H, W)`` float32 images in ``[0, 1]``, ``(N,)`` long labels and ``(N, 4)``
        long boxes ``(x0, y0, x1, y1)``.
    """
    samples = [render(seed, i, size) for i in range(start, start + count)]
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    boxes = torch.tensor([s.box for s in samples], dtype=torch.long)
    return images, labels, boxes


class ShapesDataset(Dataset[tuple[Tensor, int, Tensor]]):
    """``count`` generated images as a torch dataset of ``(image, label, box)``."""

    def __init__(self, count: int, seed: int = 0, size: int = 64) -> None:
        self.count, self.seed, self.size = count, seed, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Tensor, int, Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} images")
        sample = render(self.seed, index, self.size)
        return torch.from_numpy(sample.image), sample.label, torch.tensor(sample.box)
