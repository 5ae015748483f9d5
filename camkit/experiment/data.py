"""Image sources of an experiment: the embedded ``camkit:shapes`` set, or image files.

Files are listed when the source opens and decoded only when their shard is computed. 8-bit
images are read as RGB; 16-bit and 32-bit integer images are scaled by their bit depth's
maximum and floating-point images are taken as ``[0, 1]`` (values outside are clipped), so a
16-bit grey of 1000 is ``1000 / 65535``, not white. A file that cannot be decoded stops the
run with its name (``data.on_error = "stop"``) or is left out and listed in ``summary.json``
(``"skip"``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from camkit.errors import ConfigError, DataError
from camkit.experiment import ground_truth
from camkit.experiment.config import DataSpec, quote
from camkit.zoo import shapes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class Batch:
    """Images of one shard.

    Attributes:
        indices: positions of the images in the source.
        ids: a readable name per image (a file's relative path, or ``shapes-00012``).
        images: ``(B, 3, H, W)`` float32 RGB in ``[0, 1]``, before normalization.
        labels: ``(B,)`` ground-truth classes, or ``None``.
        boxes: ``(B, 4)`` ground-truth boxes ``(x0, y0, x1, y1)``, or ``None``.
        skipped: ``(position, id, reason)`` of each image left out because it could not
            be decoded (``data.on_error = "skip"``).
        masks: ``(B, H, W)`` ground-truth class ids per pixel (0: background), or ``None``.
    """

    indices: list[int]
    ids: list[str]
    images: Tensor
    labels: Tensor | None
    boxes: Tensor | None
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    masks: Tensor | None = None


class Source:
    """A fixed, ordered list of images that can be loaded in any subset."""

    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> Batch:
        raise NotImplementedError

    def fingerprint(self, count: int | None = None) -> dict[str, Any]:
        """The number of images and a digest of the first ``count`` (default all): equal
        fingerprints mean the same images, so results computed on them can be resumed."""
        raise NotImplementedError


class ShapesSource(Source):
    """``count`` images of :mod:`camkit.zoo.shapes` generated from ``seed``."""

    classes = shapes.CLASSES

    def __init__(self, count: int, seed: int, size: tuple[int, int]) -> None:
        if size[0] != size[1]:
            raise ConfigError(f"data.image_size: camkit:shapes images are square; got {list(size)}")
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
            # class ids as detectors and segmenters count them: 0 is background
            masks=torch.from_numpy(
                np.stack([np.where(np.asarray(s.mask), s.label + 1, 0) for s in samples])
                if samples
                else np.zeros((0, self.size, self.size), np.int64)
            ).long(),
        )

    def fingerprint(self, count: int | None = None) -> dict[str, Any]:
        count = self.count if count is None else count
        text = f"camkit:shapes {self.seed} {self.size} {count}"
        return {"images": count, "digest": hashlib.sha256(text.encode()).hexdigest()[:16]}


class FileSource(Source):
    """Image files, sorted by path, each resized (bilinear) to ``size``; with ground truth
    (:mod:`~camkit.experiment.annotations`) when ``boxes`` (one per file: scaled box and
    class) or ``masks`` are given."""

    def __init__(
        self,
        paths: list[Path],
        root: Path,
        size: tuple[int, int],
        on_error: str = "stop",
        *,
        boxes: list[tuple[list[float], int]] | None = None,
        masks: bool = False,
    ) -> None:
        self.paths, self.root, self.size, self.on_error = paths, root, size, on_error
        self.boxes, self.masks = boxes, masks

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, indices: Sequence[int]) -> Batch:
        kept, arrays, skipped = [], [], []
        for i in indices:
            try:
                arrays.append(read_image(self.paths[i], self.size))
            except DataError as exc:
                if self.on_error != "skip":
                    raise
                skipped.append((i, self.image_id(i), exc.reason))
                continue
            kept.append(i)
        height, width = self.size
        images = np.stack(arrays) if arrays else np.zeros((0, 3, height, width), np.float32)
        boxes = labels = masks = None
        if self.boxes is not None:
            boxes = torch.tensor([self.boxes[i][0] for i in kept], dtype=torch.float32)
            boxes = boxes.reshape(len(kept), 4).round().long()
            labels = torch.tensor([self.boxes[i][1] for i in kept], dtype=torch.long)
        if self.masks:
            planes = [ground_truth.read_mask(self.paths[i], self.size) for i in kept]
            masks = torch.from_numpy(
                np.stack(planes) if planes else np.zeros((0, height, width), np.int64)
            )
        return Batch(
            indices=kept,
            ids=[self.image_id(i) for i in kept],
            images=torch.from_numpy(images),
            labels=labels,
            boxes=boxes,
            skipped=skipped,
            masks=masks,
        )

    def image_id(self, index: int) -> str:
        """The file's path relative to the source's root, printable even when the file
        name is not valid UTF-8 (undecodable bytes are written as ``\\xNN``)."""
        path = self.paths[index]
        try:
            name = path.relative_to(self.root).as_posix()
        except ValueError:
            name = path.as_posix()
        return printable(name)

    def fingerprint(self, count: int | None = None) -> dict[str, Any]:
        digest = hashlib.sha256()
        paths = self.paths[:count]
        for i, path in enumerate(paths):
            try:
                stat = path.stat()
                state = f"{stat.st_size} {stat.st_mtime_ns}"
            except OSError:
                state = "missing"
            digest.update(f"{self.image_id(i)}\0{state}\n".encode())
        return {"images": len(paths), "digest": digest.hexdigest()[:16]}


class Limited(Source):
    """The first ``limit`` images of another source."""

    def __init__(self, inner: Source, limit: int) -> None:
        self.inner, self.limit = inner, min(limit, len(inner))
        self.classes = inner.classes

    def __len__(self) -> int:
        return self.limit

    def batch(self, indices: Sequence[int]) -> Batch:
        return self.inner.batch(indices)

    def fingerprint(self, count: int | None = None) -> dict[str, Any]:
        return self.inner.fingerprint(self.limit if count is None else min(count, self.limit))


class Subset(Source):
    """The images of another source at ``indices`` (those not skipped), renumbered from 0."""

    def __init__(self, inner: Source, indices: Sequence[int]) -> None:
        self.inner, self.indices = inner, list(indices)
        self.classes = inner.classes

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices: Sequence[int]) -> Batch:
        return self.inner.batch([self.indices[i] for i in indices])

    def fingerprint(self, count: int | None = None) -> dict[str, Any]:
        return self.inner.fingerprint(count)


def printable(name: str) -> str:
    """``name`` with the undecodable bytes of a non-UTF-8 file name as ``\\xNN``.

    Example:
        >>> printable(os.fsdecode(b"caf\\xe9.png"))
        'caf\\\\xe9.png'
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The file at ``path`` as ``(3, H, W)`` float32 RGB in ``[0, 1]``, resized to ``size``.

    Raises:
        DataError: the file cannot be read or decoded.

    Example:
        >>> Image.new("RGB", (320, 240)).save("photo.png")
        >>> read_image(Path("photo.png"), (224, 224)).shape
        (3, 224, 224)
    """
    height, width = size
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in _INTEGER_MODES or image.mode == "F":
                grey = _high_depth(image)
                plane = Image.fromarray(grey, mode="F").resize(
                    (width, height), Image.Resampling.BILINEAR
                )
                return np.repeat(np.asarray(plane, dtype=np.float32)[None], 3, axis=0)
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    # image decoders raise many types (OSError, SyntaxError, struct.error, ...): the file
    # and the reason are what the user needs
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise DataError(
            f"data.source: cannot read image {printable(str(path))} ({reason}); fix or remove "
            'the file, or set data.on_error = "skip" to leave such files out',
            reason,
        ) from None
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255


def _high_depth(image: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float greyscale image as float32 in ``[0, 1]``."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        # 16-bit files open as "I;16" or "I"; wider values mean a 32-bit image
        values = values / (65535.0 if values.max(initial=0) <= 65535 else 4294967295.0)
    if not np.isfinite(values).all():
        raise ValueError("the image holds NaN or infinite values")
    return np.clip(values, 0.0, 1.0).astype(np.float32)


def open_source(
    spec: DataSpec,
    base_dir: Path,
    seed: int,
    exclude: Path | None = None,
    task: str = "classification",
) -> Source:
    """The source ``spec`` describes; relative paths are relative to ``base_dir``; files
    under ``exclude`` (the run's output folder) are never part of it. ``task`` (``[task]
    kind``) says which ground truth image files need: ``detection`` reads
    ``spec.annotations``, ``segmentation`` the mask files beside the images (never images
    themselves then); a missing or malformed one fails here, before any model is built.

    Example:
        >>> from camkit.experiment.config import DataSpec
        >>> len(open_source(DataSpec(count=8, image_size=(64, 64)), Path("."), seed=0))
        8
    """
    assert spec.image_size is not None and not isinstance(spec.image_size, int)
    size = (int(spec.image_size[0]), int(spec.image_size[1]))
    source: Source
    if spec.embedded:
        source = ShapesSource(spec.count, seed, size)
    else:
        entries = [spec.source] if isinstance(spec.source, str) else list(spec.source)
        masks = task == "segmentation"
        paths, root = _find_images(entries, base_dir, exclude, masks)
        source = FileSource(paths, root, size, spec.on_error, masks=masks)
        ids = [source.image_id(i) for i in range(len(paths))]
        if masks:
            ground_truth.check_masks(paths, ids)
        if task == "detection" and spec.annotations is not None:
            file = Path(spec.annotations).expanduser()
            found = ground_truth.read_boxes(file if file.is_absolute() else base_dir / file)
            matched = ground_truth.match_boxes(found, paths, ids)
            source.boxes = [
                (ground_truth.scaled_box(box, path, size), box.category)
                for box, path in zip(matched, paths)
            ]
    return Limited(source, spec.limit) if spec.limit is not None else source


def _find_images(
    entries: list[str], base_dir: Path, exclude: Path | None, masks: bool = False
) -> tuple[list[Path], Path]:
    found: list[Path] = []
    roots = []
    for entry in entries:
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if any(ch in entry for ch in "*?["):
            roots.append(Path(glob.escape(str(path)).split("*")[0]).parent)
            candidates = [Path(p) for p in glob.glob(str(path), recursive=True)]
        elif path.is_dir():
            roots.append(path)
            candidates = list(path.rglob("*"))
        elif path.is_file():
            # a file named on its own is an image whatever its suffix
            roots.append(path.parent)
            found.append(path)
            continue
        else:
            raise ConfigError(
                f"data.source: {quote(entry)} is neither 'camkit:shapes', an image file, a folder "
                f"nor a glob pattern (looked for {printable(str(path))})"
            )
        found += [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if exclude is not None:
        skip = exclude.resolve()
        found = [p for p in found if not p.resolve().is_relative_to(skip)]
    if masks:
        found = [p for p in found if not ground_truth.is_mask_file(p)]
    images = sorted(set(found))
    if not images:
        where = ", ".join(repr(e) for e in entries)[:300]
        raise ConfigError(
            f"data.source: no images ({', '.join(IMAGE_SUFFIXES)}) found at {where} "
            f"(the output folder's own files are not counted)"
        )
    root = Path(os.path.commonpath(roots)) if len(roots) > 1 else roots[0]
    return images, root
