"""Image sources of an experiment: the embedded ``camkit:shapes`` set, or image files."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camkit.errors import ConfigError
from camkit.experiment.config import DataSpec
from camkit.zoo import shapes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Batch:
    """Images of one shard.

    Attributes:
        indices: positions of the images in the source.
        ids: a readable name per image (a file's relative path, or ``shapes-00012``).
        images: ``(B, 3, H, W)`` float32 RGB in ``[0, 1]``, before normalization.
        labels: ``(B,)`` ground-truth classes, or ``None``.
        boxes: ``(B, 4)`` ground-truth boxes ``(x0, y0, x1, y1)``, or ``None``.
    """

    indices: list[int]
    ids: list[str]
    images: Tensor
    labels: Tensor | None
    boxes: Tensor | None


class Source:
    """A fixed, ordered list of images that can be loaded in any subset."""

    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> Batch:
        raise NotImplementedError


class ShapesSource(Source):
    """``count`` images of :mod:`camkit.zoo.shapes` generated from ``seed``."""

    classes = shapes.CLASSES

    def __init__(self, count: int, seed: int, size: tuple[int, int]) -> None:
        if size[0] != size[1]:
            raise ConfigError(f"camkit:shapes images are square; got image_size {list(size)}")
        self.count, self.seed, self.size = count, seed, size[0]

    def __len__(self) -> int:
        return self.count

    def batch(self, indices: Sequence[int]) -> Batch:
        samples = [shapes.render(self.seed, i, self.size) for i in indices]
        return Batch(
            indices=list(indices),
            ids=[f"shapes-{i:05d}" for i in indices],
            images=torch.from_numpy(np.stack([s.image for s in samples])),
            labels=torch.tensor([s.label for s in samples], dtype=torch.long),
            boxes=torch.tensor([s.box for s in samples], dtype=torch.long),
        )


class FileSource(Source):
    """Image files, sorted by path, each resized (bilinear) to ``size``."""

    def __init__(self, paths: list[Path], root: Path, size: tuple[int, int]) -> None:
        self.paths, self.root, self.size = paths, root, size

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, indices: Sequence[int]) -> Batch:
        height, width = self.size
        arrays = []
        for i in indices:
            with Image.open(self.paths[i]) as image:
                rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            arrays.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255)
        return Batch(
            indices=list(indices),
            ids=[self._id(self.paths[i]) for i in indices],
            images=torch.from_numpy(np.stack(arrays)),
            labels=None,
            boxes=None,
        )

    def _id(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()


class Limited(Source):
    """The first ``limit`` images of another source."""

    def __init__(self, inner: Source, limit: int) -> None:
        self.inner, self.limit = inner, min(limit, len(inner))
        self.classes = inner.classes

    def __len__(self) -> int:
        return self.limit

    def batch(self, indices: Sequence[int]) -> Batch:
        return self.inner.batch(indices)


def open_source(spec: DataSpec, base_dir: Path, seed: int) -> Source:
    """The source ``spec`` describes; relative paths are relative to ``base_dir``."""
    assert spec.image_size is not None and not isinstance(spec.image_size, int)
    size = (int(spec.image_size[0]), int(spec.image_size[1]))
    source: Source
    if spec.embedded:
        source = ShapesSource(spec.count, seed, size)
    else:
        source = FileSource(*_find_images(spec.source, base_dir), size)
    return Limited(source, spec.limit) if spec.limit is not None else source


def _find_images(pattern: str, base_dir: Path) -> tuple[list[Path], Path]:
    path = Path(pattern).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if any(ch in pattern for ch in "*?["):
        root = Path(glob.escape(str(path)).split("*")[0]).parent
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    elif path.is_dir():
        root, files = path, sorted(p for p in path.rglob("*"))
    else:
        raise ConfigError(
            f"data.source: {pattern!r} is neither 'camkit:shapes', a folder nor a glob pattern "
            f"(looked for {path})"
        )
    images = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ConfigError(
            f"data.source: no images ({', '.join(IMAGE_SUFFIXES)}) found at {pattern!r} "
            f"(looked in {path})"
        )
    return images, root
