"""torchcam 0.5.0's ``torchcam.explain``: explain one image's prediction, save the evidence."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError
from camkit.compat.torchcam.methods import GradCAM
from camkit.compat.torchcam.methods.core import _CAM
from camkit.compat.torchcam.utils import overlay_mask
from camkit.errors import GradientError, InputError, ModelOutputError, TargetError

__all__ = ["PredictionExplanation", "explain"]


@dataclass(frozen=True)
class PredictionExplanation:
    """Prediction, maps and reproducibility metadata of one image.

    Attributes:
        logits: ``(1, K)`` scores. ``cams``: ``{class: ((h, w) map per layer, ...)}`` for the
        predicted and, when given, the expected class.
    """

    logits: Tensor
    predicted_class_idx: int
    expected_class_idx: int | None
    cams: Mapping[int, tuple[Tensor, ...]]
    method: str
    target_layers: tuple[str, ...]
    model: str
    input_shape: tuple[int, ...]
    versions: Mapping[str, str]
    class_names: tuple[str, ...] | None = None

    def save(self, directory: str | Path, image: Image.Image, alpha: float = 0.5) -> Path:
        """Write each map (``.npy``), its heatmap and overlay (PNG) and ``manifest.json`` into
        a new ``directory``; nothing is left behind if writing fails.

        Example:
            >>> from camkit.compat.torchcam.explain import explain
            >>> from torchvision.transforms.functional import to_pil_image
            >>> result = explain(model, input_tensor, target_layer="layer4")
            >>> result.save("explained", to_pil_image(input_tensor[0]))
            PosixPath('explained')
        """
        if not isinstance(image, Image.Image):
            raise CompatTypeError("`image` must be a PIL image")
        out = Path(directory)
        if out.exists():
            raise FileExistsError(f"output directory already exists: {out}")
        out.mkdir(parents=True)
        with ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, out)
            probabilities = self.logits.softmax(dim=1)[0]
            classes = {}
            for class_idx, maps in sorted(self.cams.items()):
                groups = (
                    [self.target_layers]
                    if len(maps) == 1
                    else [(name,) for name in self.target_layers]
                )
                artifacts = []
                for layer_idx, (layers, cam) in enumerate(zip(groups, maps)):
                    stem = f"class-{class_idx}-layer-{layer_idx}"
                    array = cam.numpy()
                    np.save(out / f"{stem}.npy", array, allow_pickle=False)
                    heat = (255 * np.clip(array, 0, 1)).round().astype(np.uint8)
                    Image.fromarray(heat).save(out / f"{stem}-heatmap.png")
                    overlay_mask(image, Image.fromarray(array), alpha=alpha).save(
                        out / f"{stem}-overlay.png"
                    )
                    artifacts.append(
                        {
                            "target_layers": list(layers),
                            "map": f"{stem}.npy",
                            "heatmap": f"{stem}-heatmap.png",
                            "overlay": f"{stem}-overlay.png",
                        }
                    )
                classes[str(class_idx)] = {
                    "class_idx": class_idx,
                    "class_name": self._name(class_idx),
                    "logit": self.logits[0, class_idx].item(),
                    "probability": probabilities[class_idx].item(),
                    "artifacts": artifacts,
                }
            manifest = {
                "schema_version": 1,
                "prediction": self._reference(self.predicted_class_idx),
                "expected": self._reference(self.expected_class_idx),
                "classes": classes,
                "method": self.method,
                "target_layers": list(self.target_layers),
                "model": self.model,
                "input_shape": list(self.input_shape),
                "versions": dict(self.versions),
                "image_size": list(image.size),
                "alpha": alpha,
            }
            text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
            (out / "manifest.json").write_text(text, encoding="utf-8")
            cleanup.pop_all()
        return out

    def _name(self, class_idx: int) -> str | None:
        return None if self.class_names is None else self.class_names[class_idx]

    def _reference(self, class_idx: int | None) -> dict[str, Any] | None:
        if class_idx is None:
            return None
        return {"class_idx": class_idx, "class_name": self._name(class_idx)}


def explain(
    model: nn.Module,
    input_tensor: Tensor,
    *,
    expected_class_idx: int | None = None,
    class_names: Sequence[str] | None = None,
    method: type[_CAM] = GradCAM,
    target_layer: Any = None,
    method_kwargs: Mapping[str, Any] | None = None,
) -> PredictionExplanation:
    """Explain the predicted (and the expected) class of one ``(1, C, H, W)`` image.

    The model must be in eval mode; parameters' ``.grad`` are left as they were.

    Example:
        >>> from camkit.compat.torchcam.explain import explain
        >>> result = explain(model, input_tensor, expected_class_idx=3, target_layer="layer4")
        >>> result.predicted_class_idx, result.cams[3][0].shape
        (..., torch.Size([2, 2]))
    """
    if torch.is_inference_mode_enabled():
        raise GradientError(
            "explain() cannot run inside torch.inference_mode(): CAMs need gradients"
        )
    if not isinstance(model, nn.Module) or not isinstance(input_tensor, Tensor):
        raise CompatTypeError("explain() takes a torch.nn.Module and a torch.Tensor")
    if any(m.training for m in model.modules()):
        raise InputError("the model must be in evaluation mode; call model.eval() first")
    if not input_tensor.is_floating_point():
        raise InputError(f"the input must be a floating-point tensor, got {input_tensor.dtype}")
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise InputError(f"the input must have shape (1, C, H, W), got {tuple(input_tensor.shape)}")
    if not isinstance(method, type) or not issubclass(method, _CAM):
        raise CompatTypeError("`method` must be an extractor class of camkit.compat.torchcam")
    if method_kwargs is not None and not isinstance(method_kwargs, Mapping):
        raise CompatTypeError(f"method_kwargs must be a mapping, got {type(method_kwargs)}")
    kwargs = dict(method_kwargs or {})
    if "target_layer" in kwargs:
        raise InputError("pass `target_layer` directly, not through `method_kwargs`")
    if target_layer is not None:
        kwargs["target_layer"] = target_layer
    elif method is GradCAM:
        kwargs.setdefault("input_shape", tuple(input_tensor.shape[1:]))
    x = input_tensor.detach().requires_grad_(True)
    with torch.enable_grad(), method(model, **kwargs) as extractor:
        logits = _logits(model(x))
        predicted = int(logits[0].argmax())
        names = _class_names(expected_class_idx, class_names, logits.shape[1])
        cams = {predicted: _maps(extractor(predicted, logits))}
        if expected_class_idx is not None and expected_class_idx != predicted:
            cams[expected_class_idx] = _maps(extractor(expected_class_idx, _logits(model(x))))
        return PredictionExplanation(
            logits=logits.detach().cpu(),
            predicted_class_idx=predicted,
            expected_class_idx=expected_class_idx,
            cams=MappingProxyType(cams),
            method=method.__name__,
            target_layers=tuple(extractor.target_names),
            model=f"{type(model).__module__}.{type(model).__qualname__}",
            input_shape=tuple(input_tensor.shape),
            versions=MappingProxyType(
                {
                    "python": platform.python_version(),
                    "torch": str(torch.__version__),
                    "camkit": camkit.__version__,
                }
            ),
            class_names=names,
        )


class NonFiniteOutputError(ModelOutputError, ValueError):
    """The model's logits are not finite (a ``ValueError``, as in torchcam)."""


def _logits(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.ndim != 2 or output.shape[0] != 1:
        raise ModelOutputError("explain() needs a model that returns (1, num_classes) logits")
    if not bool(torch.isfinite(output).all()):
        raise NonFiniteOutputError("the model's output contains non-finite logits")
    return output


def _maps(maps: list[Tensor]) -> tuple[Tensor, ...]:
    return tuple(cam[0].detach().to("cpu", torch.float32).contiguous() for cam in maps)


def _class_names(
    expected: int | None, names: Sequence[str] | None, num_classes: int
) -> tuple[str, ...] | None:
    if expected is not None and (isinstance(expected, bool) or not 0 <= expected < num_classes):
        raise TargetError(f"expected_class_idx {expected!r} is not in [0, {num_classes - 1}]")
    if names is None:
        return None
    if isinstance(names, str) or len(names) != num_classes:
        raise TargetError(f"class_names must name all {num_classes} classes")
    if not all(isinstance(n, str) for n in names):
        raise CompatTypeError("every class name must be a string")
    return tuple(names)
