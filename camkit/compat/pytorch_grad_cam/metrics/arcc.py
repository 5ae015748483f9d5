"""pytorch-grad-cam's ``metrics.arcc``: ARCC and its coherency and complexity parts, computed
by :func:`camkit.metrics.complexity`, :func:`camkit.metrics.coherency` and the shim's
:class:`~camkit.compat.pytorch_grad_cam.metrics.road.ROADCombined`, with the formula of
:func:`camkit.metrics.arcc`.

The maps are ``(B, H, W)`` NumPy arrays in ``[0, 1]``; every score is a ``(B,)`` float32 NumPy
array. The Pearson correlation adds its ``1e-8`` to the product of the norms, where the
original adds it to the product of the standard deviations: the same to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camkit import metrics
from camkit.compat.pytorch_grad_cam.metrics.road import ROADCombined
from camkit.metrics.arcc import pearson

__all__ = ["ARCC", "Coherency", "Complexity", "batch_pearson_coherency"]

Target = Callable[[Tensor], Tensor]
_EPS = 1e-8


def batch_pearson_coherency(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``(B,)`` Pearson correlation of two batches of maps, map by map.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.arcc import batch_pearson_coherency
        >>> a = np.array([[[1.0, 2.0], [3.0, 4.0]]])
        >>> batch_pearson_coherency(a, -a).round(4)
        array([-1.], dtype=float32)
    """
    return pearson(torch.from_numpy(np.asarray(A)), torch.from_numpy(np.asarray(B))).numpy()


class Complexity:
    """``(B,)`` mean absolute value of each map (lower is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.arcc import Complexity
        >>> Complexity()(np.array([[[1.0, 0.0], [0.5, 0.5]]], dtype=np.float32))
        array([0.5], dtype=float32)
    """

    def __call__(self, grayscale_cams: np.ndarray) -> np.ndarray:
        return metrics.complexity(torch.from_numpy(np.asarray(grayscale_cams))).numpy()


class Coherency:
    """``(B,)`` ``(1 + Pearson(cam, base_method(input * cam))) / 2`` (higher is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GradCAM
        >>> from camkit.compat.pytorch_grad_cam.metrics.arcc import Coherency
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> cam = GradCAM(model, [model.layer4[-1]])
        >>> targets = [ClassifierOutputTarget(281)]
        >>> Coherency()(input_tensor, cam(input_tensor, targets), targets, model, cam).shape
        (1,)
    """

    def __call__(
        self,
        input_tensor: Tensor,
        grayscale_cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
        base_method: Any,
    ) -> np.ndarray:
        def explain(images: Tensor, _: object) -> Tensor:
            again = np.asarray(base_method(input_tensor=images, targets=targets))
            return torch.from_numpy(again).to(input_tensor.device)

        maps = torch.from_numpy(np.asarray(grayscale_cams)).to(input_tensor.device)
        # the class indices are not read: ``explain`` passes the user's target callables
        indices = torch.zeros(len(maps), dtype=torch.long)
        return metrics.coherency(explain, input_tensor, maps, indices).cpu().numpy()


class ARCC:
    """``(B,)`` harmonic mean of coherency, ``1 - complexity`` and ``clip(2 * ROAD, 0, 1)``
    (:func:`camkit.metrics.arcc`'s formula; higher is better). ``base_method`` is the CAM
    that made the maps.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GradCAM
        >>> from camkit.compat.pytorch_grad_cam.metrics.arcc import ARCC
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> cam = GradCAM(model, [model.layer4[-1]])
        >>> targets = [ClassifierOutputTarget(281)]
        >>> ARCC(cam)(input_tensor, cam(input_tensor, targets), targets, model).shape
        (1,)
    """

    def __init__(self, base_method: Any, road_percentiles: Sequence[float] = (20, 40, 60, 80)):
        self.complexity = Complexity()
        self.coherency = Coherency()
        self.road = ROADCombined(percentiles=road_percentiles)
        self.base_method = base_method

    def __call__(
        self,
        input_tensor: Tensor,
        grayscale_cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
    ) -> np.ndarray:
        complexity = self.complexity(grayscale_cams)
        coherency = self.coherency(input_tensor, grayscale_cams, targets, model, self.base_method)
        road = self.road(input_tensor, grayscale_cams, targets, model)
        confidence = np.clip(2 * road, 0, 1)
        inverse = 1 / (coherency + _EPS) + 1 / (1 - complexity + _EPS) + 1 / (confidence + _EPS)
        return np.asarray(3 / inverse, dtype=np.float32)
