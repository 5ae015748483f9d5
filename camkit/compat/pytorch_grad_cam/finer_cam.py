"""pytorch-grad-cam's ``FinerCAM`` and ``RefineCAM``: a base CAM class with a contrastive
objective (:class:`camkit_contrib.FinerTarget`) or with its layers' maps multiplied
(:func:`camkit_contrib.refine`). Both need camkit-contrib."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from camkit.compat._shared import CompatTypeError, contrib
from camkit.compat.pytorch_grad_cam.base_cam import BaseCAM, GradCAM, GradCAMPlusPlus, Target

__all__ = ["FinerCAM", "RefineCAM"]

#: The ranks (by closeness of the logit to the target's) of pytorch-grad-cam's references.
COMPARISON_CATEGORIES = (1, 2, 3)


def _base_class(base_method: object) -> type[BaseCAM]:
    if not (isinstance(base_method, type) and issubclass(base_method, BaseCAM)):
        raise CompatTypeError(
            f"base_method must be a CAM class of camkit.compat.pytorch_grad_cam, got "
            f"{base_method!r}"
        )
    return base_method


class _Wrapper:
    """A context manager around base CAM objects (camkit holds no hooks between calls)."""

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def __enter__(self) -> _Wrapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Nothing to release; unlike the original, no exception is swallowed."""


class FinerCAM(_Wrapper):
    r"""Finer-CAM: ``base_method``'s map of the softmax-weighted contrast
    :math:`\sum_t p_{d_t} (y_c - \alpha\, y_{d_t}) / \sum_t p_{d_t}` between the target class
    :math:`c` and the classes :math:`d_t` whose logits are closest to it
    (``camkit_contrib.FinerTarget(weighting="softmax")``).

    ``forward(input_tensor, targets=None, eigen_smooth=False, alpha=1, comparison_categories=
    None, target_idx=None)``: with ``targets`` given, the base method's maps for them; else
    the target is ``target_idx`` (default: each image's top class) and the references are the
    classes at ranks ``comparison_categories`` (default ``[1, 2, 3]``) when the classes are
    sorted by the distance of their logit to the target's.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import FinerCAM
        >>> with FinerCAM(model, [model.layer4[-1]]) as cam:
        ...     grayscale_cam = cam(input_tensor, alpha=0.8)
        >>> grayscale_cam.shape
        (1, 64, 64)
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        base_method: type[BaseCAM] = GradCAM,
    ) -> None:
        self._finer_target = contrib("FinerCAM").FinerTarget
        self.base_cam = _base_class(base_method)(model, target_layers, reshape_transform)
        self.uses_gradients = self.base_cam.uses_gradients

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
        alpha: float = 1,
        comparison_categories: Sequence[int] | None = None,
        target_idx: int | None = None,
    ) -> np.ndarray:
        if targets is not None:
            return self.base_cam.forward(input_tensor, targets, eigen_smooth)
        categories = (
            COMPARISON_CATEGORIES if comparison_categories is None else comparison_categories
        )
        finer = self._finer_target
        strength = float(alpha)

        def contrast(scores: Tensor, index: Tensor) -> Tensor:
            logits = scores.detach()
            chosen = [int(c) for c in categories if int(c) < logits.shape[1]]
            target = logits.argmax(1) if target_idx is None else torch.full_like(index, target_idx)
            distance = (logits - logits.gather(1, target[:, None])).abs()
            distance.scatter_(1, target[:, None], -1.0)  # the target ranks first (rank 0)
            references = torch.argsort(distance, dim=1, stable=True)[:, chosen]
            # FinerTarget reads per-image values at each row's image index
            rows = int(index.max()) + 1
            per_image_target = target.new_zeros(rows).index_copy(0, index, target)
            per_image_refs = references.new_zeros(rows, len(chosen)).index_copy(
                0, index, references
            )
            return finer(per_image_target, per_image_refs, strength=strength, weighting="softmax")(
                scores, index
            )

        param = next(self.base_cam.model.parameters(), None)
        x = input_tensor.to(param.device) if param is not None else input_tensor
        return self.base_cam._maps(x, contrast, eigen_smooth)


class RefineCAM(_Wrapper):
    """RefineCAM: one ``base_method`` map per target layer (each at the input's size, in
    ``[0, 1]``), multiplied and normalized (:func:`camkit_contrib.refine`).

    Keyword arguments go to ``base_method``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import RefineCAM
        >>> refined = RefineCAM(model, [model.layer2[-1], model.layer4[-1]])(input_tensor)
        >>> refined.shape
        (1, 64, 64)
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        base_method: type[BaseCAM] = GradCAMPlusPlus,
        **kwargs: Any,
    ) -> None:
        self._refine = contrib("RefineCAM").refine
        base = _base_class(base_method)
        self.base_cam_per_layer = [
            base(model, [layer], reshape_transform, **kwargs) for layer in target_layers
        ]

    def forward(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None = None,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        # the original passes eigen_smooth positionally, where BaseCAM takes aug_smooth
        maps = [
            torch.from_numpy(cam(input_tensor, targets, eigen_smooth=eigen_smooth))
            for cam in self.base_cam_per_layer
        ]
        return self._refine(maps).numpy().astype(np.float32)
