"""pytorch-grad-cam's ``metrics.perturbation_confidence``: the confidence change after a
perturbation of each image by its map, and the removal of the pixels above (or below) a
percentile of the map.

A metric is called as ``metric(input_tensor, cams, targets, model)`` with ``(B, C, H, W)``
inputs, ``(B, H, W)`` NumPy maps and one target callable per image, and returns ``(B,)``
float32 NumPy scores (perturbed minus clean with ``return_diff``).

One difference: ``percentile="auto"`` (the original's Otsu threshold through OpenCV) raises
:class:`~camkit.errors.ConfigError`; give a number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from camkit.compat.pytorch_grad_cam.metrics.cam_mult_image import _scores
from camkit.errors import ConfigError

__all__ = [
    "AveragerAcrossThresholds",
    "PerturbationConfidenceMetric",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
]

Target = Callable[[Tensor], Tensor]
#: ``perturbation(image, cam)``: a ``(C, H, W)`` image perturbed by its ``(H, W)`` map.
Perturbation = Callable[[Tensor, Tensor], Tensor]


class PerturbationConfidenceMetric:
    """Per image: the target score of ``perturbation(image, cam)``, minus the clean score
    with ``return_diff``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.perturbation_confidence import (
        ...     PerturbationConfidenceMetric,
        ... )
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> darken = PerturbationConfidenceMetric(lambda image, cam: image * 0)
        >>> darken(input_tensor, grayscale_cams, [ClassifierOutputTarget(281)], model).shape
        (1,)
    """

    def __init__(self, perturbation: Perturbation) -> None:
        self.perturbation = perturbation

    def __call__(
        self,
        input_tensor: Tensor,
        cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, Tensor]:
        perturbed = torch.stack(
            [
                self.perturbation(image.cpu(), torch.from_numpy(np.asarray(cam)))
                for image, cam in zip(input_tensor, cams)
            ]
        ).to(input_tensor.device)
        with torch.no_grad():
            result = _scores(model(perturbed), targets)
            if return_diff:
                result = result - _scores(model(input_tensor), targets)
        return (result, perturbed) if return_visualization else result


class RemoveMostRelevantFirst:
    """A perturbation: ``imputer(image, keep)`` with ``keep`` 1 where the map is below its
    ``percentile``-th percentile (NumPy's, linear interpolation) and 0 elsewhere.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.perturbation_confidence import (
        ...     RemoveMostRelevantFirst,
        ... )
        >>> remove = RemoveMostRelevantFirst(50, lambda image, keep: image * keep)
        >>> remove(torch.ones(1, 2, 2), torch.tensor([[0.1, 0.2], [0.8, 0.9]]))
        tensor([[[1., 1.],
                 [0., 0.]]])
    """

    def __init__(self, percentile: float, imputer: Callable[[Tensor, Tensor], Tensor]) -> None:
        if isinstance(percentile, str):
            raise ConfigError(
                f"percentile={percentile!r}: camkit takes a number from 0 to 100 "
                "(pytorch-grad-cam's 'auto', Otsu's threshold through OpenCV, is not supported)"
            )
        self.percentile = percentile
        self.imputer = imputer

    def __call__(self, input_tensor: Tensor, mask: Tensor) -> Tensor:
        threshold = np.percentile(mask.cpu().numpy(), self.percentile)
        keep = (mask < torch.tensor(threshold, dtype=mask.dtype, device=mask.device)).float()
        return self.imputer(input_tensor, keep)


class RemoveLeastRelevantFirst(RemoveMostRelevantFirst):
    """:class:`RemoveMostRelevantFirst` on ``1 - mask``: removes the pixels of the map below
    its ``100 - percentile``-th percentile.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.perturbation_confidence import (
        ...     RemoveLeastRelevantFirst,
        ... )
        >>> remove = RemoveLeastRelevantFirst(50, lambda image, keep: image * keep)
        >>> remove(torch.ones(1, 2, 2), torch.tensor([[0.1, 0.2], [0.8, 0.9]]))
        tensor([[[0., 0.],
                 [1., 1.]]])
    """

    def __call__(self, input_tensor: Tensor, mask: Tensor) -> Tensor:
        return super().__call__(input_tensor, 1 - mask)


class AveragerAcrossThresholds:
    """The mean of ``imputer(p)(input_tensor, cams, targets, model)`` over ``percentiles``;
    ``imputer`` makes a metric for one percentile.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.perturbation_confidence import (
        ...     AveragerAcrossThresholds,
        ... )
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> averager = AveragerAcrossThresholds(ROADMostRelevantFirst, percentiles=[25, 75])
        >>> averager(input_tensor, grayscale_cams, [ClassifierOutputTarget(281)], model).shape
        (1,)
    """

    def __init__(
        self,
        imputer: Callable[[float], Callable[..., np.ndarray]],
        percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    ) -> None:
        self.imputer = imputer
        self.percentiles = list(percentiles)

    def __call__(
        self, input_tensor: Tensor, cams: np.ndarray, targets: Sequence[Target], model: nn.Module
    ) -> np.ndarray:
        scores = [self.imputer(p)(input_tensor, cams, targets, model) for p in self.percentiles]
        return np.mean(np.array(scores, dtype=np.float32), axis=0)
