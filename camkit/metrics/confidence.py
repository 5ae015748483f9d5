r"""Average drop and increase in confidence: does the map keep what the model needs?

The *explanation map* of image :math:`I` is :math:`E = L \circ I`, the image multiplied
pixel-wise by its ``[0, 1]`` saliency map. With :math:`Y_i` the model's confidence in the
target class on image :math:`i` and :math:`O_i` its confidence on the explanation map:

.. math::

    \text{Average Drop} = \frac{1}{N} \sum_i \frac{\max(0, Y_i - O_i)}{Y_i}, \qquad
    \text{Increase in Confidence} = \frac{1}{N} \sum_i \mathbb{1}[Y_i < O_i]

(the paper reports both in percent). Lower drop and higher increase are better.

Source: Chattopadhyay et al., *Grad-CAM++: Generalized Gradient-based Visual Explanations
for Deep Convolutional Networks*, WACV 2018, section 5.1.
"""

from __future__ import annotations

from torch import Tensor

from camkit.metrics.checks import check_images, check_maps, check_same_shape, check_targets
from camkit.metrics.scores import ModelFn, target_scores


def explanation_maps(images: Tensor, maps: Tensor) -> Tensor:
    """``E = L * I``: ``(B, C, H, W)`` images times their ``(B, H, W)`` maps in ``[0, 1]``."""
    return images * maps.to(images.dtype)[:, None]


def average_drop(scores: Tensor, explanation_scores: Tensor) -> Tensor:
    """Per-image drop ``max(0, Y - O) / Y`` (average it for the metric).

    Args:
        scores: ``(B,)`` confidences ``Y`` on the images (positive, e.g. softmax).
        explanation_scores: ``(B,)`` confidences ``O`` on the explanation maps.
    """
    check_same_shape(scores, explanation_scores, ("scores", "explanation_scores"))
    return (scores - explanation_scores).clamp(min=0) / scores


def increase_in_confidence(scores: Tensor, explanation_scores: Tensor) -> Tensor:
    """Per-image ``1.0`` where the explanation map raises the confidence (``Y < O``)."""
    check_same_shape(scores, explanation_scores, ("scores", "explanation_scores"))
    return (scores < explanation_scores).float()


def confidence_change(
    model: ModelFn,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    softmax: bool = True,
    scores: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image average drop and increase in confidence of ``maps`` on ``images``.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        images: ``(B, C, H, W)`` images whose zero is "no signal" (e.g. pixel values in
            ``[0, 1]``, before normalization).
        maps: ``(B, H, W)`` maps in ``[0, 1]``.
        targets: ``(B,)`` class indices.
        softmax: compare softmax probabilities (as the paper does) rather than raw scores.
        scores: ``(B,)`` confidences on the clean images, when already known.

    Returns:
        ``(drop, increase)``, each ``(B,)`` float32.
    """
    check_maps(maps, check_images(images), name="maps")
    check_targets(targets, images.shape[0])
    if scores is None:
        scores = target_scores(model, images, targets, softmax=softmax)
    explained = target_scores(model, explanation_maps(images, maps), targets, softmax=softmax)
    return average_drop(scores, explained), increase_in_confidence(scores, explained)
