"""ROAD (remove and debias) metrics of pytorch-grad-cam's ``metrics.road``, computed by
:mod:`camkit.metrics` (its noisy linear imputation and removal masks).

A metric is called as ``metric(input_tensor, cams, targets, model)`` with ``(B, C, H, W)``
inputs, ``(B, H, W)`` NumPy maps and one target callable per image, and returns ``(B,)``
float32 NumPy confidence changes (imputed minus clean). ``percentile=p`` removes the share
``1 - p / 100`` of the pixels: the most salient (MoRF) or the least salient (LeRF).

One deliberate difference, as in :func:`camkit.metrics.removal_mask`: pixels tied at the
threshold are split by position instead of all removed, so a map that is 0 on most pixels
removes the share asked for and never the whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from camkit import metrics
from camkit.errors import ConfigError

__all__ = [
    "NoisyLinearImputer",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
]

Target = Callable[[Tensor], Tensor]
#: pytorch-grad-cam's default percentiles of the averaging metrics.
PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class NoisyLinearImputer:
    """Fill removed pixels with the weighted mean of their 8 neighbours, plus Gaussian noise
    of standard deviation ``noise`` (:func:`camkit.metrics.noisy_linear_imputation`).

    ``weighting`` is accepted for compatibility; the neighbour weights are always
    1/6 (edges) and 1/12 (corners), as in the original.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import NoisyLinearImputer
        >>> imputer = NoisyLinearImputer(noise=0.0)
        >>> keep = torch.ones(4, 4)
        >>> keep[1, 1] = 0
        >>> imputer(torch.arange(16.0).reshape(1, 4, 4), keep)[0, 1, 1]
        tensor(5.)
    """

    def __init__(self, noise: float = 0.01, weighting: object = None) -> None:
        self.noise = noise

    def __call__(self, img: Tensor, mask: Tensor) -> Tensor:
        """``(C, H, W)`` image with the pixels where the ``(H, W)`` ``mask`` is 0 imputed."""
        return self.impute(img[None], mask[None] == 0)[0]

    def impute(self, images: Tensor, removed: Tensor) -> Tensor:
        """``(B, C, H, W)`` images with the ``(B, H, W)`` ``removed`` pixels imputed."""
        return metrics.noisy_linear_imputation(images, removed, noise=self.noise)


class _ROAD:
    """The confidence change after imputing one share of the pixels of every image."""

    order: Literal["morf", "lerf"] = "morf"

    def __init__(self, percentile: float) -> None:
        if isinstance(percentile, str) or not 0 < percentile < 100:
            raise ConfigError(
                f"percentile={percentile!r}: camkit's ROAD takes a percentile strictly between "
                "0 and 100 (pytorch-grad-cam's 'auto', Otsu's threshold, is not supported)"
            )
        self.percentile = percentile
        self.imputer = NoisyLinearImputer()

    def __call__(
        self,
        input_tensor: Tensor,
        cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
        return_visualization: bool = False,
        return_diff: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, Tensor]:
        result, imputed = self.changes(input_tensor, cams, targets, model, return_diff)
        return (result, imputed) if return_visualization else result

    def changes(
        self,
        input_tensor: Tensor,
        cams: np.ndarray,
        targets: Sequence[Target],
        model: nn.Module,
        return_diff: bool = True,
    ) -> tuple[np.ndarray, Tensor]:
        """The ``(B,)`` target scores after imputing (minus the clean ones with
        ``return_diff``) and the ``(B, C, H, W)`` imputed inputs."""
        saliency = torch.from_numpy(np.asarray(cams, dtype=np.float32))
        removed = metrics.removal_mask(saliency, 1 - self.percentile / 100, self.order)
        imputed = self.imputer.impute(input_tensor.cpu(), removed).to(input_tensor.device)
        with torch.no_grad():
            result = _scores(model(imputed), targets)
            if return_diff:
                result = result - _scores(model(input_tensor), targets)
        return result, imputed


def _scores(outputs: Tensor, targets: Sequence[Target]) -> np.ndarray:
    return np.array([t(o).cpu().numpy() for t, o in zip(targets, outputs)], dtype=np.float32)


class ROADMostRelevantFirst(_ROAD):
    """Confidence change after imputing the pixels above the map's ``percentile`` (lower is
    better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADMostRelevantFirst
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = ROADMostRelevantFirst(percentile=80)
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    def __init__(self, percentile: float = 80) -> None:
        super().__init__(percentile)


class ROADLeastRelevantFirst(_ROAD):
    """Confidence change after imputing the pixels below the map's ``100 - percentile``
    percentile (higher is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = ROADLeastRelevantFirst(percentile=20)
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    order = "lerf"

    def __init__(self, percentile: float = 20) -> None:
        super().__init__(percentile)


class _Average:
    """The mean of a ROAD metric over ``percentiles``."""

    metric: type[_ROAD] = ROADMostRelevantFirst

    def __init__(self, percentiles: Sequence[float] = PERCENTILES) -> None:
        self.percentiles = list(percentiles)

    def __call__(
        self, input_tensor: Tensor, cams: np.ndarray, targets: Sequence[Target], model: nn.Module
    ) -> np.ndarray:
        scores = [
            self.metric(p).changes(input_tensor, cams, targets, model)[0] for p in self.percentiles
        ]
        return np.mean(np.array(scores, dtype=np.float32), axis=0)


class ROADMostRelevantFirstAverage(_Average):
    """:class:`ROADMostRelevantFirst` averaged over ``percentiles`` (lower is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADMostRelevantFirstAverage
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = ROADMostRelevantFirstAverage()
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """


class ROADLeastRelevantFirstAverage(_Average):
    """:class:`ROADLeastRelevantFirst` averaged over ``percentiles`` (higher is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = ROADLeastRelevantFirstAverage()
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    metric = ROADLeastRelevantFirst


class ROADCombined:
    """``(LeRF average - MoRF average) / 2`` per image (higher is better).

    Example:
        >>> from camkit.compat.pytorch_grad_cam.metrics.road import ROADCombined
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> cam_metric = ROADCombined(percentiles=[20, 40, 60, 80])
        >>> scores = cam_metric(input_tensor, grayscale_cams, targets, model)
        >>> scores.shape
        (1,)
    """

    def __init__(self, percentiles: Sequence[float] = PERCENTILES) -> None:
        self.percentiles = list(percentiles)
        self.morf_averager = ROADMostRelevantFirstAverage(percentiles)
        self.lerf_averager = ROADLeastRelevantFirstAverage(percentiles)

    def __call__(
        self, input_tensor: Tensor, cams: np.ndarray, targets: Sequence[Target], model: nn.Module
    ) -> np.ndarray:
        lerf = self.lerf_averager(input_tensor, cams, targets, model)
        morf = self.morf_averager(input_tensor, cams, targets, model)
        return (lerf - morf) / 2
