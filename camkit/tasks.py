"""Helpers for models that are not single-label classifiers: detectors, multi-label
classifiers and embedding models (docs/tasks.md walks through each task).

The targets themselves live in :mod:`camkit.targets`; these helpers choose a layer, expand a
batch into one row per positive label, and compute embeddings to compare with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from camkit.engine import CAMResult, Extractor
from camkit.engine.outputs import scores_of
from camkit.errors import InputError, LayerError, TargetError
from camkit.targets import SimilarityTarget

__all__ = ["detector_layer", "embed", "positive_labels", "similarity_maps"]


def detector_layer(model: nn.Module) -> str:
    """The layer camkit suggests explaining in a torchvision detector.

    - Two-stage and dense detectors on a feature pyramid (Faster/Mask R-CNN, RetinaNet,
      FCOS, ``backbone.body`` + ``backbone.fpn``): the last stage of the backbone body, e.g.
      ``backbone.body.layer4`` on a ResNet. Every pyramid level is built from it, so every
      box's score reaches it (Faster/Mask R-CNN pool each box from one level only, and the
      gradient maps of the other levels are empty), and it is the most semantic map.
    - SSD and SSDlite (``backbone.features`` + ``backbone.extra``): the last block of
      ``backbone.features``, the last map of the base network before the extra layers
      (``backbone.features.1`` on SSDlite).

    A pyramid level itself is a layer too (``backbone.fpn.layer_blocks.0`` is the finest);
    pass several as a list and camkit fuses their maps. The pyramid module ``backbone.fpn``
    and ``backbone`` return dicts of levels, not one map, so they cannot be explained whole.

    Example:
        >>> from torchvision.models.detection import fasterrcnn_resnet50_fpn
        >>> detector_layer(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None))
        'backbone.body.layer4'
    """
    backbone = getattr(model, "backbone", None)
    body = getattr(backbone, "body", None)
    if isinstance(body, nn.Module) and len(body._modules):
        return f"backbone.body.{list(body._modules)[-1]}"
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Module) and len(features._modules):
        # The last block, not the container: SSDlite runs the blocks one by one.
        return f"backbone.features.{list(features._modules)[-1]}"
    raise LayerError(
        f"{type(model).__name__} has no backbone.body or backbone.features, the layouts of "
        "torchvision's detectors; name the layer to explain"
    )


def positive_labels(scores: Tensor, threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Expand a multi-label batch into one row per positive label.

    A multi-label classifier scores each label independently (a sigmoid over each logit);
    one CAM per image cannot show several labels, so explain every ``(image, label)`` pair
    with ``logit > threshold`` (``threshold=0.0`` is probability 0.5).

    Args:
        scores: ``(B, K)`` logits of the batch.
        threshold: the logit above which a label counts as positive.

    Returns:
        ``(images, labels)``: two ``(R,)`` long tensors, image ``images[r]`` with label
        ``labels[r]``, ordered by image then label. Explain them with
        ``cam(x[images], targets=labels)``.

    Example:
        >>> images, labels = positive_labels(torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, -1.0]]))
        >>> images.tolist(), labels.tolist()
        ([0, 0, 1], [0, 2, 1])
    """
    if scores.dim() != 2:
        raise TargetError(
            f"positive_labels needs (B, num_labels) logits, got shape {tuple(scores.shape)}"
        )
    images, labels = (scores.detach() > threshold).nonzero(as_tuple=True)
    return images.cpu(), labels.cpu()


def embed(model: nn.Module, images: Tensor) -> Tensor:
    """``(B, D)`` embeddings of ``images``: the model's output read as camkit reads scores
    (a tensor, the first tensor of a tuple, a ``logits``/``out`` entry of a dict, or a
    ``.logits`` attribute), flattened per image, without gradients.

    Use it for the reference of a :class:`~camkit.targets.SimilarityTarget`: another image's
    embedding, or the mean embedding of several images of a concept.

    Example:
        >>> concept = embed(model, cat_images).mean(0)        # (D,)
        >>> res = camkit.create("gradcam", model, "layer4")(x, SimilarityTarget(concept))
    """
    if not isinstance(images, Tensor) or images.dim() < 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"embed needs a batch of images (B, C, H, W), got {got}")
    with torch.no_grad():
        out: Any = model(images)
    return scores_of(out).flatten(1)


def similarity_maps(cam: Extractor, first: Tensor, second: Tensor) -> tuple[CAMResult, CAMResult]:
    """Both maps of "why are these images similar?": what in ``first`` makes its embedding
    close to ``second``'s, and what in ``second`` makes it close to ``first``'s.

    Args:
        cam: an extractor on an embedding model (from :func:`camkit.create`).
        first, second: ``(B, C, H, W)`` images, compared pair by pair (row ``i`` of one with
            row ``i`` of the other).

    Returns:
        ``(first_result, second_result)``, each explaining the cosine similarity of its
        images' embeddings to the other images' (:class:`~camkit.targets.SimilarityTarget`).

    Example:
        >>> cam = camkit.create("gradcam", model, "layer4")
        >>> res_a, res_b = similarity_maps(cam, image_a, image_b)
    """
    if first.shape[0] != second.shape[0]:
        raise InputError(
            f"similarity_maps compares images pair by pair, but got {first.shape[0]} and "
            f"{second.shape[0]} images"
        )
    first_embedding, second_embedding = embed(cam.model, first), embed(cam.model, second)
    return (
        cam(first, targets=SimilarityTarget(second_embedding)),
        cam(second, targets=SimilarityTarget(first_embedding)),
    )
