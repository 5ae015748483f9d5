"""One-shot explanations of single images: ``camkit.explain`` and ``camkit explain IMAGE...``.

The image is explained whole, at its own aspect ratio (models with a fixed input size get it
resized to that size), and the maps come back at the image's original size.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from camkit.api import create
from camkit.engine.maps import resize
from camkit.engine.outputs import scores_of
from camkit.errors import InputError, TargetError, did_you_mean
from camkit.experiment.models import LoadedModel, Preprocessing, load_model
from camkit.viz import overlay, to_pil

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray
Target = str | int

_TOP = re.compile(r"^top(\d+)$", re.IGNORECASE)


@dataclass
class Prediction:
    """One of the model's top classes: its index, its name (``None`` when the weights have
    no class names) and its softmax probability."""

    index: int
    label: str | None
    probability: float

    def __str__(self) -> str:
        name = f"{self.label} ({self.index})" if self.label else f"class {self.index}"
        return f"{name}: {self.probability:.1%}"


@dataclass
class Explanation:
    """The maps of one image.

    Attributes:
        image: the original image, RGB.
        name: a name for its files (the file's stem, or ``"image"``).
        predictions: the model's top classes, most probable first.
        targets: the class indices explained, in order.
        maps: ``{method: (T, H, W)}`` maps in ``[0, 1]`` at the image's original size, one per
            target.
        layers: ``{method: [layer, ...]}`` the layers each method used (auto-located ones too).
        classes: the class names by index, or ``None``.
        input_size: the ``(H, W)`` the model saw.
    """

    image: Image.Image
    name: str
    predictions: list[Prediction]
    targets: list[int]
    maps: dict[str, Tensor]
    layers: dict[str, list[str]]
    classes: tuple[str, ...] | None = None
    input_size: tuple[int, int] = (0, 0)
    files: list[Path] = field(default_factory=list)

    def label(self, index: int) -> str:
        """The class name of ``index``, or ``"class <index>"``."""
        if self.classes is not None and 0 <= index < len(self.classes):
            return self.classes[index]
        return f"class {index}"

    def overlay(
        self, method: str | None = None, target: int = 0, alpha: float = 0.5, colormap: str = "jet"
    ) -> Image.Image:
        """The map of ``method`` (default: the first) for the ``target``-th target, blended
        over the original image."""
        key = next(iter(self.maps)) if method is None else method
        if key not in self.maps:
            raise InputError(
                f"no map of method {key!r}; this explanation has {', '.join(self.maps)}"
            )
        return overlay(self.image, self.maps[key][target], alpha=alpha, cmap=colormap)

    def save(
        self, folder: str | os.PathLike[str], alpha: float = 0.5, colormap: str = "jet"
    ) -> list[Path]:
        """Write one PNG overlay per method and target into ``folder``; returns their paths.

        Files are ``<name>.<method>.png``, or ``<name>.<method>.<class index>.png`` when
        several targets were explained. Each file is complete or absent, never half-written.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for method in self.maps:
            for k, index in enumerate(self.targets):
                suffix = f".{index}" if len(self.targets) > 1 else ""
                path = out / f"{self.name}.{method}{suffix}.png"
                _write_png(self.overlay(method, k, alpha, colormap), path)
                paths.append(path)
        self.files = paths
        return paths


def explain(
    image: ImageInput,
    model: str | nn.Module | LoadedModel,
    methods: str | Sequence[str] = "gradcam",
    *,
    weights: str | None = "DEFAULT",
    layer: Any = None,
    target: Target | Sequence[int] = "top1",
    preprocessing: Preprocessing | None = None,
    top: int = 5,
    name: str | None = None,
    **options: Any,
) -> Explanation:
    """Explain one image: its top predictions and a map per method and target.

    Args:
        image: a file path, a PIL image, or an ``(H, W, 3)`` uint8 array.
        model: a source (``"torchvision:resnet50"``, ``"timm:convnext_tiny"``,
            ``"python:net.py:build"``, ``"camkit:shapes-cnn"``, a saved model file), a loaded
            model (:func:`camkit.experiment.models.load_model`) or an ``nn.Module``.
        methods: one method name or several.
        weights: for a source: ``"DEFAULT"`` (pretrained), ``"none"`` or a checkpoint file.
        layer: a layer name (or list) for every method; ``None`` locates it.
        target: ``"top1"``, ``"topK"`` (the K most probable classes), a class name, a class
            index, or a list of indices.
        preprocessing: overrides the model's own (an ``nn.Module`` has none: images go in as
            ``[0, 1]`` RGB, shorter side 224, unless this is given).
        top: how many predictions to report.
        name: the stem of saved files (default: the file's stem, or ``"image"``).
        **options: run options (:class:`camkit.RunOptions`, e.g. ``batch_size``) and method
            options, given to every method.

    Example:
        Not run by the tests: it downloads ResNet-18's pretrained weights and reads a photo.
        >>> result = camkit.explain("cat.jpg", "torchvision:resnet18")  # doctest: +SKIP
        >>> result.predictions[0], result.layers["gradcam"]               # doctest: +SKIP
        (Prediction(index=281, label='tabby', ...), ['layer4'])
        >>> result.save("out")                                             # doctest: +SKIP
        [PosixPath('out/cat.gradcam.png')]
    """
    loaded = _loaded(model, weights)
    prep = preprocessing or loaded.preprocessing
    picture, stem = _read(image)
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255).permute(2, 0, 1)
    param = next(loaded.model.parameters(), None)
    x = prep(pixels[None]).to(param.device if param is not None else "cpu")
    with torch.inference_mode():
        scores = scores_of(loaded.model(x)).float()
    if scores.dim() != 2 or scores.shape[0] != 1:
        raise InputError(
            f"the model returned scores of shape {tuple(scores.shape)} for one image; "
            "expected (1, num_classes)"
        )
    probs = scores[0].softmax(0)
    classes = loaded.classes
    chosen = _targets(target, probs, classes)
    best = probs.topk(min(top, probs.numel()))
    predictions = [
        Prediction(int(i), _name(classes, int(i)), float(p))
        for p, i in zip(best.values, best.indices)
    ]
    names = [methods] if isinstance(methods, str) else list(methods)
    height, width = picture.height, picture.width
    maps, layers = {}, {}
    batch = x.expand(len(chosen), *x.shape[1:])
    for method in names:
        cam = create(method, loaded.model, layer, progress=False, **options)
        result = cam(batch, targets=chosen)
        key = cam.method.name
        maps[key] = resize(result.maps.float().cpu(), (height, width))
        layers[key] = list(result.layers)
    return Explanation(
        image=picture,
        name=name or stem,
        predictions=predictions,
        targets=chosen,
        maps=maps,
        layers=layers,
        classes=classes,
        input_size=(int(x.shape[-2]), int(x.shape[-1])),
    )


def _loaded(model: str | nn.Module | LoadedModel, weights: str | None) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        return LoadedModel(model.eval(), Preprocessing(), None, type(model).__name__, "given")
    if isinstance(model, str):
        return load_model(model, weights)
    raise InputError(
        f"model must be a source such as 'torchvision:resnet50', an nn.Module or a loaded "
        f"model, not {type(model).__name__}"
    )


def _read(image: ImageInput) -> tuple[Image.Image, str]:
    """The image as RGB, and a stem for its files."""
    if isinstance(image, Image.Image):
        return _rgb(image), "image"
    if isinstance(image, np.ndarray):
        return to_pil(image), "image"
    if not isinstance(image, (str, os.PathLike)):
        raise InputError(
            f"image must be a file path, a PIL image or an (H, W, 3) uint8 array, not "
            f"{type(image).__name__}"
        )
    path = Path(image)
    if not path.is_file():
        raise InputError(f"no image file at {path}")
    try:
        with Image.open(path) as opened:
            # Phones store pictures sideways and say so in EXIF; show them as viewers do.
            return _rgb(ImageOps.exif_transpose(opened)), path.stem
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as an image: {exc}") from None


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit and 32-bit integer pictures are scaled from 0-65535 (PIL's own
    conversion clips them to 0-255, turning most of them white), float ones from [0, 1]."""
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float32) / 65535
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
    else:
        return image.convert("RGB")
    gray = (np.clip(np.nan_to_num(values), 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _targets(
    target: Target | Sequence[int], probs: Tensor, classes: Sequence[str] | None
) -> list[int]:
    """The class indices ``target`` asks for."""
    count = probs.numel()
    if isinstance(target, bool):
        raise TargetError(f"target must be 'topK', a class name or an index, not {target!r}")
    if isinstance(target, int):
        indices = [target]
    elif isinstance(target, str):
        top = _TOP.match(target.strip())
        if top:
            k = int(top.group(1))
            if not 1 <= k <= count:
                raise TargetError(f"target {target!r}: the model has {count} classes")
            return [int(i) for i in probs.topk(k).indices]
        if target.strip().lstrip("-").isdigit():
            indices = [int(target)]
        else:
            indices = [_class_index(target, classes)]
    else:
        indices = list(target)
        if not indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
            raise TargetError(f"a list of targets must hold class indices, got {target!r}")
    for index in indices:
        if not 0 <= index < count:
            raise TargetError(f"target {index}: the model has classes 0..{count - 1}")
    return indices


def _class_index(name: str, classes: Sequence[str] | None) -> int:
    if classes is None:
        raise TargetError(
            f"target {name!r}: this model's weights carry no class names; give a class index"
        )
    folded = [c.lower() for c in classes]
    if name.strip().lower() in folded:
        return folded.index(name.strip().lower())
    raise TargetError(
        f"target {name!r} is not a class of this model (e.g. {', '.join(classes[:3])}, ...)."
        + did_you_mean(name, classes)
    )


def _name(classes: Sequence[str] | None, index: int) -> str | None:
    return classes[index] if classes is not None and index < len(classes) else None


def _write_png(picture: Image.Image, path: Path) -> None:
    """Write ``path`` whole or not at all: a temporary file in the same folder, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
