"""pytorch-grad-cam's Deep Feature Factorization (``pytorch_grad_cam.feature_factorization``),
computed by camkit-contrib's :class:`camkit_contrib.DeepFeatureFactorization`.

The factorization is camkit's own: non-negative matrix factorization by multiplicative
updates in torch (pytorch-grad-cam calls scikit-learn's coordinate-descent ``NMF``). NMF has
no unique solution, so concepts can come in another order and, where the two solvers reach
different minima, differ; see docs/migrating.md.
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from camkit.compat._shared import CompatTypeError, contrib
from camkit.compat.pytorch_grad_cam.base_cam import scale

__all__ = [
    "DeepFeatureFactorization",
    "create_labels_legend",
    "dff",
    "run_dff_on_image",
    "show_factorization_on_image",
]


def dff(activations: np.ndarray, n_components: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Factorize ``(B, C, h, w)`` activations: concepts ``(C, k)`` and explanations
    ``(B, k, h, w)``, as pytorch-grad-cam's ``dff`` (NaN activations count as 0)."""
    nmf = contrib("dff").dff.nmf
    acts = torch.nan_to_num(torch.as_tensor(np.asarray(activations, dtype=np.float32)), nan=0.0)
    batch, channels, h, w = acts.shape
    data = acts.transpose(0, 1).reshape(channels, -1)
    offset = data.amin(1, keepdim=True)
    basis, coeffs, _ = nmf(data - offset, n_components)
    explanations = coeffs.reshape(n_components, batch, h, w).transpose(0, 1)
    return (basis + offset).numpy(), explanations.numpy()


class DeepFeatureFactorization:
    """Deep Feature Factorization of ``target_layer``'s activations into ``n_components``
    concepts, a map per concept and image, and optionally ``computation_on_concepts`` (e.g.
    the classifier head) applied to the ``(k, C)`` concept vectors.

    ``reshape_transform`` is accepted; camkit reads token layers' layout itself.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import DeepFeatureFactorization
        >>> dff = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)
        >>> concepts, batch_explanations, concept_outputs = dff(input_tensor, n_components=4)
        >>> concepts.shape, batch_explanations[0].shape, concept_outputs.shape
        ((512, 4), (4, 64, 64), (4, 1000))
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        computation_on_concepts: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(target_layer, nn.Module):
            raise CompatTypeError(
                f"target_layer must be a module of the model, got {type(target_layer).__name__}"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise CompatTypeError("reshape_transform must be callable")
        self._contrib = contrib("DeepFeatureFactorization")
        self.model = model
        self.target_layer = target_layer
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts

    def __call__(self, input_tensor: Tensor, n_components: int = 16) -> tuple[Any, ...]:
        """``(concepts (C, k), [per image (k, H, W) maps in [0, 1]])``, plus the ``(k, ...)``
        concept outputs when ``computation_on_concepts`` was given (NumPy arrays)."""
        res = self._contrib.deep_feature_factorization(
            self.model,
            self.target_layer,
            input_tensor,
            n_components,
            classifier=self.computation_on_concepts,
        )
        batch, k, h, w = res.layer_maps.shape
        scaled = scale(res.layer_maps.reshape(batch * k, h, w))
        size = tuple(input_tensor.shape[2:])
        up = F.interpolate(scaled[:, None], size, mode="bilinear", align_corners=False)
        maps = up.reshape(batch, k, *size).cpu().numpy().astype(np.float32)
        concepts = res.concepts.T.cpu().numpy()
        if res.concept_scores is None:
            return concepts, list(maps)
        return concepts, list(maps), res.concept_scores.cpu().numpy()

    def __enter__(self) -> DeepFeatureFactorization:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Nothing to release (camkit holds no hooks between calls); no exception swallowed."""


def create_labels_legend(
    concept_scores: np.ndarray, labels: dict[int, str], top_k: int = 2
) -> list[str]:
    """One label per concept: its ``top_k`` categories as ``"name:score"`` lines."""
    legend = []
    for row in np.asarray(concept_scores):
        best = np.argsort(row)[::-1][:top_k]
        names = [f"{','.join(labels[int(c)].split(',')[:3])}:{row[c]:.2f}" for c in best]
        legend.append("\n".join(names))
    return legend


def _colors(count: int) -> list[np.ndarray]:
    return [np.array(colorsys.hsv_to_rgb(0.83 * i / count, 1.0, 1.0)) for i in range(count)]


def show_factorization_on_image(
    img: np.ndarray,
    explanations: np.ndarray,
    colors: Sequence[np.ndarray] | None = None,
    image_weight: float = 0.5,
    concept_labels: list[str] | None = None,
) -> np.ndarray:
    """Each pixel coloured by its strongest concept, brightness its map's value, blended
    with the ``(H, W, 3)`` float image in ``[0, 1]``; with ``concept_labels`` a legend panel
    of the same size is appended on the right. ``(H, W or 2W, 3)`` uint8."""
    explanations = np.asarray(explanations, dtype=np.float32)
    count = explanations.shape[0]
    colors = list(colors) if colors is not None else _colors(count)
    strongest = explanations.argmax(0)
    mask = np.zeros((*explanations.shape[1:], 3), dtype=np.float32)
    for i in range(count):
        value = np.where(strongest == i, explanations[i], 0.0)
        mask += value[..., None] * np.asarray(colors[i][:3], dtype=np.float32)
    result = np.uint8(np.clip(img * image_weight + mask * (1 - image_weight), 0, 1) * 255)
    if concept_labels is None:
        return result
    panel = Image.new("RGB", (result.shape[1], result.shape[0]), "white")
    draw = ImageDraw.Draw(panel)
    step = max(1, result.shape[0] // max(1, count))
    for i, label in enumerate(concept_labels):
        color = tuple(int(255 * c) for c in colors[i][:3])
        top = i * step
        draw.rectangle([4, top + 4, 20, top + 12], fill=color)
        draw.multiline_text((26, top + 2), label, fill="black")
    return np.hstack((result, np.asarray(panel)))


def run_dff_on_image(
    model: nn.Module,
    target_layer: nn.Module,
    classifier: Callable[[Tensor], Tensor],
    img_pil: Image.Image,
    img_tensor: Tensor,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
    n_components: int = 5,
    top_k: int = 2,
) -> np.ndarray:
    """The image, its concepts coloured on it, and a legend of each concept's ``top_k``
    classes (``model.config.id2label``), side by side: ``(H, 3W, 3)`` uint8."""
    id2label: dict[int, str] | None = getattr(getattr(model, "config", None), "id2label", None)
    if id2label is None:
        raise CompatTypeError(
            "run_dff_on_image labels concepts with model.config.id2label (a Hugging Face "
            "model's); this model has none"
        )
    factorization = DeepFeatureFactorization(model, target_layer, reshape_transform, classifier)
    _, explanations, outputs = factorization(img_tensor[None], n_components)
    probabilities = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
    labels = create_labels_legend(probabilities, id2label, top_k=top_k)
    image = np.asarray(img_pil)
    shown = show_factorization_on_image(
        image / 255, explanations[0], image_weight=0.3, concept_labels=labels
    )
    return np.hstack((image, shown))
