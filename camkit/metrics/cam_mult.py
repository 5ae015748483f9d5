r"""Confidence change under the CAM-multiplied image: signed, per image.

.. math:: \Delta_i = O_i - Y_i

where :math:`Y_i` is the model's confidence in the target class on image :math:`i` and
:math:`O_i` on :math:`L \circ I`, the image multiplied pixel-wise by its ``[0, 1]`` map (as
given to the model: for a normalized input, the normalized tensor is multiplied). Higher is
better. :func:`camkit.metrics.confidence_change` turns the same two confidences into the
Grad-CAM++ paper's average drop and increase in confidence; this is the raw difference that
pytorch-grad-cam reports as ``CamMultImageConfidenceChange`` (with ``softmax=False`` for its
``ClassifierOutputTarget``, ``softmax=True`` for ``ClassifierOutputSoftmaxTarget``).
"""

from __future__ import annotations

from torch import Tensor

from camkit.metrics.confidence import explanation_maps
from camkit.metrics.scores import ModelFn, target_scores


def cam_mult_confidence_change(
    model: ModelFn,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    softmax: bool = True,
    scores: Tensor | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Per-image change of target confidence when the image is multiplied by its map.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        images: ``(B, C, H, W)`` images as the model takes them.
        maps: ``(B, H, W)`` maps in ``[0, 1]`` at the images' resolution.
        targets: ``(B,)`` class indices.
        softmax: compare softmax probabilities rather than raw scores.
        scores: ``(B,)`` confidences on the clean images, when already known.
        batch_size: images per forward pass.

    Returns:
        ``(B,)`` float32 ``O - Y``.

    Example:
        >>> model = camkit.testing.tiny_model()
        >>> x, maps = torch.randn(2, 3, 16, 16), torch.rand(2, 16, 16)
        >>> cam_mult_confidence_change(model, x, maps, torch.tensor([0, 1])).shape
        torch.Size([2])
    """
    if scores is None:
        scores = target_scores(model, images, targets, softmax=softmax, batch_size=batch_size)
    multiplied = explanation_maps(images, maps)
    return target_scores(model, multiplied, targets, softmax=softmax, batch_size=batch_size) - (
        scores
    )
