"""Ground truth of image files for ``[task]`` runs: boxes from a COCO-style JSON file, masks
from mask files beside the images.

- **Boxes** (``data.annotations``, task ``detection``): a JSON object with ``images``
  (``id``, ``file_name``, optionally ``width`` and ``height``) and ``annotations``
  (``image_id``, ``bbox`` as ``[x, y, width, height]`` in the file's pixels, ``category_id``;
  ``iscrowd = 1`` entries are ignored). An image file is matched by its path relative to the
  data source's root, else by its file name. Of several annotations of an image, the largest
  box is the one explained and measured. Boxes are scaled with the image to
  ``data.image_size``.
- **Masks** (task ``segmentation``): ``<stem>.mask.png`` beside ``<stem>.<suffix>``, one
  channel whose pixel values are class ids (0 is background), resized with the image
  (nearest neighbour). Mask files are never read as images.

Every problem found is a :class:`~camkit.errors.ConfigError` (the file is not valid) or a
:class:`~camkit.errors.DataError` (an image has no ground truth), raised when the source
opens, before the model is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from camkit.errors import ConfigError, DataError

#: What a mask file's name adds to its image's stem.
MASK_SUFFIX = ".mask.png"
#: The largest annotation file read.
MAX_ANNOTATION_BYTES = 256 << 20


@dataclass(frozen=True)
class Box:
    """One ground-truth object: ``(x0, y0, x1, y1)`` in the file's pixels and its class."""

    box: tuple[float, float, float, float]
    category: int
    width: int | None
    height: int | None


def is_mask_file(path: Path) -> bool:
    """Whether ``path`` is a mask file (``<stem>.mask.png``), not an image.

    Example:
        >>> is_mask_file(Path("a/cat.mask.png")), is_mask_file(Path("a/cat.png"))
        (True, False)
    """
    return path.name.lower().endswith(MASK_SUFFIX)


def mask_path(image: Path) -> Path:
    """The mask file of ``image``: ``<stem>.mask.png`` in the same folder.

    Example:
        >>> mask_path(Path("data/cat.jpg")).as_posix()
        'data/cat.mask.png'
    """
    return image.with_name(image.stem + MASK_SUFFIX)


def read_boxes(path: Path) -> dict[str, Box]:
    """Per ``file_name`` of a COCO-style file, its largest non-crowd annotation.

    Raises:
        ConfigError: the file is missing, not JSON, or not COCO-shaped (named key by key).
    """
    where = f"data.annotations: {path}"
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    if path.stat().st_size > MAX_ANNOTATION_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_ANNOTATION_BYTES >> 20} MiB")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not a JSON file ({str(exc)[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object with 'images' and 'annotations'")
    images = _list(data, "images", where)
    names: dict[Any, tuple[str, int | None, int | None]] = {}
    for i, entry in enumerate(images):
        at = f"{where}: images[{i}]"
        name = _field(entry, "file_name", str, at)
        ident = _field(entry, "id", (int, str), at)
        width, height = entry.get("width"), entry.get("height")
        if not all(v is None or (_is_int(v) and v > 0) for v in (width, height)):
            raise ConfigError(f"{at}: width and height must be positive integers")
        names[ident] = (name, width, height)
    best: dict[str, Box] = {}
    for i, entry in enumerate(_list(data, "annotations", where)):
        at = f"{where}: annotations[{i}]"
        ident = _field(entry, "image_id", (int, str), at)
        if ident not in names:
            raise ConfigError(f"{at}: image_id {ident!r} is not in 'images'")
        if entry.get("iscrowd", 0) == 1:
            continue
        bbox = _field(entry, "bbox", list, at)
        numbers = [float(v) for v in bbox if _is_number(v)]
        if len(bbox) != 4 or len(numbers) != 4 or not all(map(math.isfinite, numbers)):
            raise ConfigError(f"{at}: bbox must be [x, y, width, height], four numbers")
        x, y, w, h = numbers
        if w <= 0 or h <= 0:
            raise ConfigError(f"{at}: bbox width and height must be positive, got {bbox}")
        category = _field(entry, "category_id", int, at)
        name, width, height = names[ident]
        box = Box((x, y, x + w, y + h), category, width, height)
        old = best.get(name)
        if old is None or _area(box) > _area(old):
            best[name] = box
    return best


def _area(box: Box) -> float:
    return (box.box[2] - box.box[0]) * (box.box[3] - box.box[1])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list {key!r} (COCO format)")
    return value


def _field(entry: Any, key: str, kind: Any, at: str) -> Any:
    if not isinstance(entry, dict):
        raise ConfigError(f"{at}: expected an object")
    value = entry.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{at}: missing or malformed {key!r} (got {str(value)[:80]})")
    return value


def match_boxes(boxes: dict[str, Box], paths: list[Path], ids: list[str]) -> list[Box]:
    """The annotation of each image (``ids``: paths relative to the source's root).

    Raises:
        DataError: an image has no annotation.
    """
    by_name: dict[str, Box] = {}
    for name, box in boxes.items():
        by_name.setdefault(Path(name).name, box)
    out: list[Box] = []
    for path, ident in zip(paths, ids):
        found = boxes.get(ident) or by_name.get(path.name)
        if found is None:
            raise DataError(
                f"data.annotations: image {ident} has no box in the annotation file (matched "
                "by file_name: its path under the data folder, or its file name)",
                "no annotation",
            )
        out.append(found)
    return out


def scaled_box(box: Box, path: Path, size: tuple[int, int]) -> list[float]:
    """``box`` in the pixels of the image resized to ``size`` ``(H, W)``."""
    width, height = box.width, box.height
    if width is None or height is None:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception as exc:  # decoders raise many types
            raise DataError(f"data.source: cannot read image {path} ({exc})", str(exc)) from None
    sx, sy = size[1] / width, size[0] / height
    x0, y0, x1, y1 = box.box
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def check_masks(paths: list[Path], ids: list[str]) -> None:
    """Every image has its mask file.

    Raises:
        DataError: naming the first image without one.
    """
    for path, ident in zip(paths, ids):
        if not mask_path(path).is_file():
            raise DataError(
                f"data.source: image {ident} has no mask file {mask_path(path).name} beside it "
                "(task.kind = 'segmentation' reads <stem>.mask.png, class ids as pixel values)",
                "no mask file",
            )


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The mask of image ``path`` as ``(H, W)`` int64 class ids, resized (nearest) to ``size``.

    Raises:
        DataError: the mask file cannot be decoded or has more than one channel.
    """
    file = mask_path(path)
    try:
        with Image.open(file) as image:
            image.load()
            if image.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"expected one channel of class ids, got mode {image.mode}")
            resized = image.resize((size[1], size[0]), Image.Resampling.NEAREST)
            return np.asarray(resized).astype(np.int64)
    except Exception as exc:  # decoders raise many types
        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
        raise DataError(f"data.source: cannot read mask {file} ({reason})", reason) from None
