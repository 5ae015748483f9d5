"""pytorch-grad-cam's targets: callables from one image's model output to a scalar score.

Each takes the output of one image (``(K,)`` for a classifier) or of a batch (``(N, K)``)
where the original does; a list of them, one per image, is the ``targets`` argument of a CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BinaryClassifierOutputTarget",
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "RawScoresOutputTarget",
    "SemanticSegmentationTarget",
    "SoftmaxOutputTarget",
]


def _column(output: Tensor, index: int) -> Tensor:
    return output[index] if output.ndim == 1 else output[:, index]


class ClassifierOutputTarget:
    """The logit of ``category``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> ClassifierOutputTarget(1)(torch.tensor([0.5, 2.0]))
        tensor(2.)
    """

    def __init__(self, category: int) -> None:
        self.category = category

    def __call__(self, model_output: Tensor) -> Tensor:
        return _column(model_output, self.category)


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of ``category``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import (
        ...     ClassifierOutputSoftmaxTarget,
        ... )
        >>> ClassifierOutputSoftmaxTarget(0)(torch.zeros(2))
        tensor(0.5000)
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        return _column(torch.softmax(model_output, dim=-1), self.category)


class ClassifierOutputReST(ClassifierOutputTarget):
    """The logit of ``category`` minus its cross-entropy loss (pre- and post-softmax).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputReST
        >>> float(ClassifierOutputReST(0)(torch.zeros(2)))  # 0 - log 2
        -0.6931...
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        batch = model_output if model_output.ndim > 1 else model_output[None]
        labels = torch.full((batch.shape[0],), self.category, device=batch.device)
        rest = batch[:, self.category] - F.cross_entropy(batch, labels, reduction="none")
        return rest if model_output.ndim > 1 else rest[0]


class BinaryClassifierOutputTarget(ClassifierOutputTarget):
    """The output itself for ``category == 1``, its negation otherwise (one-logit models).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import (
        ...     BinaryClassifierOutputTarget,
        ... )
        >>> BinaryClassifierOutputTarget(0)(torch.tensor([1.5]))
        tensor([-1.5000])
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        return model_output if self.category == 1 else -model_output


class SoftmaxOutputTarget:
    """The softmax of the output.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import SoftmaxOutputTarget
        >>> SoftmaxOutputTarget()(torch.zeros(2))
        tensor([0.5000, 0.5000])
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        return torch.softmax(model_output, dim=-1)


class RawScoresOutputTarget:
    """The output as it is.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import RawScoresOutputTarget
        >>> RawScoresOutputTarget()(torch.ones(2))
        tensor([1., 1.])
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        return model_output


class SemanticSegmentationTarget:
    """The summed ``category`` scores of the pixels in ``mask`` (an ``(H, W)`` NumPy array).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import (
        ...     SemanticSegmentationTarget,
        ... )
        >>> SemanticSegmentationTarget(0, np.ones((2, 2), np.float32))(torch.ones(3, 2, 2))
        tensor(4.)
    """

    def __init__(self, category: int, mask: np.ndarray) -> None:
        self.category = category
        self.mask = torch.from_numpy(mask)

    def __call__(self, model_output: Tensor) -> Tensor:
        return (model_output[self.category] * self.mask.to(model_output.device)).sum()


class FasterRCNNBoxScoreTarget:
    """For each reference box, IoU plus score of the best-overlapping detection of the same
    label (when IoU exceeds ``iou_threshold``), summed.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
        >>> out = {"boxes": torch.tensor([[0.0, 0, 2, 2]]), "labels": torch.tensor([1]),
        ...        "scores": torch.tensor([0.9])}
        >>> FasterRCNNBoxScoreTarget([1], [np.array([0.0, 0, 2, 2])])(out)
        tensor([1.9000])
    """

    def __init__(
        self, labels: Sequence[int], bounding_boxes: Sequence[Any], iou_threshold: float = 0.5
    ) -> None:
        self.labels = labels
        self.bounding_boxes = bounding_boxes
        self.iou_threshold = iou_threshold

    def __call__(self, model_outputs: dict[str, Tensor]) -> Tensor:
        from torchvision.ops import box_iou

        boxes = model_outputs["boxes"]
        total = torch.zeros(1, device=boxes.device, dtype=boxes.dtype)
        if len(boxes) == 0:
            return total
        for box, label in zip(self.bounding_boxes, self.labels):
            reference = torch.as_tensor(box[None, :], device=boxes.device, dtype=boxes.dtype)
            ious = box_iou(reference, boxes)[0]
            best = ious.argmax()
            if ious[best] > self.iou_threshold and model_outputs["labels"][best] == label:
                total = total + ious[best] + model_outputs["scores"][best]
        return total


class FinerWeightedTarget:
    r"""Finer-CAM's target: :math:`\sum_j p_j (y_c - \alpha y_j) / (\sum_j p_j + 10^{-9})`
    over the comparison categories :math:`j`, with :math:`p` the softmax probabilities.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import FinerWeightedTarget
        >>> float(FinerWeightedTarget(0, [1], 1.0)(torch.tensor([2.0, 1.0])))
        1.0
    """

    def __init__(
        self, main_category: int, comparison_categories: Sequence[int], alpha: float
    ) -> None:
        self.main_category = main_category
        self.comparison_categories = comparison_categories
        self.alpha = alpha

    def __call__(self, model_output: Tensor) -> Tensor:
        main = model_output[..., self.main_category]
        prob = torch.softmax(model_output, dim=-1)
        weights = [prob[..., j] for j in self.comparison_categories]
        numerator = sum(
            w * (main - self.alpha * model_output[..., j])
            for w, j in zip(weights, self.comparison_categories)
        )
        return torch.as_tensor(numerator / (sum(weights) + 1e-9))
