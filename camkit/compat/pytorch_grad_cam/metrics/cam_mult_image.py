"""Confidence change when the input is multiplied by its CAM (pytorch-grad-cam's
``metrics.cam_mult_image``), the explanation maps of :func:`camkit.metrics.explanation_maps`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from camkit import metrics

__all__ = [
    "CamMultImageConfidenceChange",
    "DropInConfidence",
    "IncreaseInConfidence",
    "multiply_tensor_with_cam",
]


def multiply_tensor_with_cam(input_tensor: Tensor, cam: Tensor) -> Tensor:
    """The ``(C, H, W)`` input times its ``(H, W)`` map.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import (
        ...     multiply_tensor_with_cam,
        ... )
        >>> multiply_tensor_with_cam(torch.ones(3, 2, 2), torch.zeros(2, 2)).sum()
        tensor(0.)
    """
    return metrics.explanation_maps(input_tensor[None], cam[None])[0]


class CamMultImageConfidenceChange:
    """Per image: target score of ``input * cam`` minus the score of ``input``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import (
        ...     CamMultImageConfidenceChange,
        ... )
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = CamMultImageConfidenceChange()
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    def __init__(self) -> None:
        self.perturbation = multiply_tensor_with_cam

    def __call__(
        self,
        input_tensor: Tensor,
        cams: np.ndarray,
        targets: Sequence[Callable[[Tensor], Tensor]],
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, Tensor]:
        maps = torch.from_numpy(np.asarray(cams)).to(input_tensor.device)
        perturbed = metrics.explanation_maps(input_tensor, maps)
        with torch.no_grad():
            after = _scores(model(perturbed), targets)
            result = after - _scores(model(input_tensor), targets) if return_diff else after
        result = self._reported(result)
        return (result, perturbed) if return_visualization else result

    def _reported(self, change: np.ndarray) -> np.ndarray:
        """What a subclass reports of the per-image change."""
        return change


def _scores(outputs: Tensor, targets: Sequence[Callable[[Tensor], Tensor]]) -> np.ndarray:
    return np.array([t(o).cpu().numpy() for t, o in zip(targets, outputs)], dtype=np.float32)


class DropInConfidence(CamMultImageConfidenceChange):
    """Per image: ``max(0, -change)``, the confidence lost on ``input * cam``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = DropInConfidence()
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    def _reported(self, change: np.ndarray) -> np.ndarray:
        return np.maximum(-change, 0)


class IncreaseInConfidence(CamMultImageConfidenceChange):
    """Per image: ``1.0`` where ``input * cam`` raises the confidence.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import IncreaseInConfidence
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = IncreaseInConfidence()
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    def _reported(self, change: np.ndarray) -> np.ndarray:
        return np.float32(change > 0)
