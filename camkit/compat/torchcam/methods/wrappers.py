"""torchcam's ``FinerCAM`` and ``RefineCAM``: a base extractor with a contrastive objective
(:class:`camkit_contrib.FinerTarget`) or with its layers' maps multiplied
(:func:`camkit_contrib.refine`). Both need camkit-contrib."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn

from camkit.compat._shared import CompatTypeError, contrib
from camkit.compat.torchcam.methods.core import _CAM, LayerArg, OutputTarget
from camkit.compat.torchcam.methods.gradient import GradCAM, GradCAMpp, LayerCAM
from camkit.errors import ConfigError, TargetError

__all__ = ["FinerCAM", "RefineCAM"]

References = int | list[int] | list[list[int]]


class _CAMWrapper:
    """Delegates torchcam's extractor attributes and lifecycle to ``base_cam``."""

    def __init__(self, base_cam: _CAM) -> None:
        self.base_cam = base_cam

    @property
    def model(self) -> nn.Module:
        return self.base_cam.model

    @property
    def target_names(self) -> list[str]:
        return self.base_cam.target_names

    def enable_hooks(self) -> None:
        self.base_cam.enable_hooks()

    def disable_hooks(self) -> None:
        self.base_cam.disable_hooks()

    def reset_hooks(self) -> None:
        self.base_cam.reset_hooks()

    def remove_hooks(self) -> None:
        self.base_cam.remove_hooks()

    def _hooks_off(self) -> AbstractContextManager[None]:
        """The base extractor's hooks paused (torchcam's metrics score through this)."""
        return self.base_cam._hooks_off()

    def __enter__(self) -> _CAMWrapper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.base_cam.__exit__(exc_type, exc, traceback)


class FinerCAM(_CAMWrapper):
    r"""Finer-CAM: ``base_method``'s maps of :math:`y_c - \gamma \frac{1}{T}\sum_t y_{d_t}`
    (``camkit_contrib.FinerTarget``), the target's score less the mean score of reference
    classes (by default the ``num_references`` classes whose scores are closest to it).

    ``cam_extractor(class_idx, scores, comparison_idx=None, normalized=True)``:
    ``comparison_idx`` gives the references (an int, a list for every sample, or one list
    per sample).

    Example:
        >>> from camkit.compat.torchcam.methods import FinerCAM, LayerCAM
        >>> with FinerCAM(model, "layer4", base_method=LayerCAM) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores, comparison_idx=[101, 102])
        >>> cams[0].shape
        torch.Size([1, 2, 2])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        input_shape: tuple[int, ...] = (3, 224, 224),
        *,
        base_method: type[_CAM] = GradCAM,
        gamma: float = 0.6,
        num_references: int = 3,
        **base_kwargs: Any,
    ) -> None:
        self._finer_target = contrib("FinerCAM").FinerTarget
        if base_method not in (GradCAM, GradCAMpp, LayerCAM):
            raise CompatTypeError(
                f"base_method must be GradCAM, GradCAMpp or LayerCAM, got {base_method!r}"
            )
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise CompatTypeError(f"gamma must be a real number, got {gamma!r}")
        if not math.isfinite(gamma) or gamma < 0:
            raise ConfigError(f"gamma must be finite and non-negative, got {gamma!r}")
        self.gamma = float(gamma)
        self.num_references = num_references
        self._finer_target(strength=self.gamma, num_references=num_references)  # validates
        super().__init__(base_method(model, target_layer, input_shape=input_shape, **base_kwargs))

    def __call__(
        self,
        class_idx: int | list[int],
        scores: Tensor | None = None,
        comparison_idx: References | None = None,
        normalized: bool = True,
        **kwargs: Any,
    ) -> list[Tensor]:
        """One ``(N, h, w)`` Finer-CAM per target layer."""
        return self.compute_cams(class_idx, scores, comparison_idx, normalized, **kwargs)

    def compute_cams(
        self,
        class_idx: int | list[int],
        scores: Tensor | None = None,
        comparison_idx: References | None = None,
        normalized: bool = True,
        **kwargs: Any,
    ) -> list[Tensor]:
        """As calling the extractor (torchcam's name for the call without its prechecks)."""
        if kwargs.get("targets") is not None:
            raise TargetError("FinerCAM does not support arbitrary output targets")
        if scores is None:
            raise TargetError("FinerCAM: scores is required (the model's output)")
        if not isinstance(scores, Tensor):
            raise CompatTypeError(f"FinerCAM: scores must be a tensor, got {type(scores)}")
        if scores.ndim != 2:
            raise TargetError("FinerCAM needs the model's (N, num_classes) output scores")
        if isinstance(class_idx, bool) or not isinstance(class_idx, (int, list)):
            raise CompatTypeError(f"class_idx must be an int or a list of ints, got {class_idx!r}")
        references = None if comparison_idx is None else _references(comparison_idx)
        _check_classes(class_idx, references)
        target = self._finer_target(
            class_idx,
            references,
            num_references=self.num_references,
            strength=self.gamma,
            weighting="mean",
        )
        retain_graph = bool(kwargs.get("retain_graph", False))
        return self.base_cam._cams(target, scores, normalized, retain_graph)

    def fuse_cams(self, cams: list[Tensor], target_shape: tuple[int, int] | None = None) -> Tensor:
        """Fuse the maps as the base extractor does."""
        return self.base_cam.fuse_cams(cams, target_shape)

    def __repr__(self) -> str:
        return (
            f"FinerCAM(base_method={type(self.base_cam).__name__}, target_layer="
            f"{self.target_names}, gamma={self.gamma}, num_references={self.num_references})"
        )


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_classes(class_idx: int | list[int], references: Tensor | None) -> None:
    """torchcam's checks: integer classes, references without the target or duplicates."""
    targets = class_idx if isinstance(class_idx, list) else [class_idx]
    if not all(_is_index(c) for c in targets):
        raise CompatTypeError(f"class_idx must contain integers, got {class_idx!r}")
    if references is None:
        return
    rows = references.tolist() if references.ndim == 2 else [references.tolist()] * len(targets)
    if len(targets) == 1:
        targets = targets * len(rows)
    for i, (target, row) in enumerate(zip(targets, rows)):
        if target in row:
            raise TargetError(f"comparison_idx contains the target class for sample {i}")
        if len(set(row)) != len(row):
            raise TargetError(f"comparison_idx contains duplicates for sample {i}")


def _references(comparison_idx: References) -> Tensor:
    """torchcam's ``comparison_idx`` as FinerTarget's references: ``(T,)`` or ``(N, T)``."""
    rows = [comparison_idx] if isinstance(comparison_idx, int) else comparison_idx
    if not isinstance(rows, list):
        raise CompatTypeError(
            f"comparison_idx must be an integer, a list, or a nested list, got {comparison_idx!r}"
        )
    if len({isinstance(r, list) for r in rows}) > 1:
        raise CompatTypeError(
            f"comparison_idx must hold integers or lists, not both: {comparison_idx!r}"
        )
    if not rows or any(isinstance(r, list) and not r for r in rows):
        raise TargetError("comparison_idx and its rows cannot be empty")
    flat = [v for r in rows for v in (r if isinstance(r, list) else [r])]
    if not all(_is_index(v) for v in flat):
        raise CompatTypeError(f"comparison_idx must contain integers, got {comparison_idx!r}")
    try:
        return torch.tensor(rows, dtype=torch.long)
    except (TypeError, ValueError) as exc:
        raise TargetError(
            f"comparison_idx must be an int, a list of ints or one equal-length list of ints "
            f"per sample, got {comparison_idx!r}"
        ) from exc


class RefineCAM(_CAMWrapper):
    """RefineCAM: ``base_method``'s normalized maps of two or more layers, resized to the
    largest, multiplied and normalized again (:func:`camkit_contrib.refine`).

    Returns a one-element list, as torchcam. camkit's ``refine`` always normalizes its
    result: ``normalized=False`` raises a ``ConfigError``.

    Example:
        >>> from camkit.compat.torchcam.methods import LayerCAM, RefineCAM
        >>> layers = ["layer2", "layer3", "layer4"]
        >>> with RefineCAM(model, layers, base_method=LayerCAM) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cam = cam_extractor(class_idx=100, scores=scores)[0]
        >>> cam.shape
        torch.Size([1, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: list[nn.Module | str],
        input_shape: tuple[int, ...] = (3, 224, 224),
        *,
        base_method: type[_CAM] = GradCAMpp,
        **base_kwargs: Any,
    ) -> None:
        contrib("RefineCAM")  # computed by camkit-contrib: a clear error now if it is absent
        if not isinstance(target_layer, list) or len(target_layer) < 2:
            raise ConfigError(f"RefineCAM needs a list of two or more layers, got {target_layer!r}")
        if not (isinstance(base_method, type) and issubclass(base_method, _CAM)):
            raise CompatTypeError(f"base_method must be a CAM extractor class, got {base_method!r}")
        super().__init__(base_method(model, target_layer, input_shape=input_shape, **base_kwargs))

    def __call__(
        self,
        class_idx: int | list[int] | None = None,
        scores: Any = None,
        normalized: bool = True,
        target_shape: tuple[int, ...] | None = None,
        *,
        targets: OutputTarget | list[OutputTarget] | None = None,
        **kwargs: Any,
    ) -> list[Tensor]:
        """``[(N, H, W)]``: the refined map of the target layers."""
        cams = self.base_cam(class_idx, scores, normalized=True, targets=targets, **kwargs)
        return [self.fuse_cams(cams, target_shape, normalized)]

    def compute_cams(
        self,
        class_idx: int | list[int] | None = None,
        scores: Any = None,
        normalized: bool = True,
        target_shape: tuple[int, ...] | None = None,
        *,
        targets: OutputTarget | list[OutputTarget] | None = None,
        **kwargs: Any,
    ) -> list[Tensor]:
        """As calling the extractor, without the base extractor's argument checks."""
        cams = self.base_cam.compute_cams(class_idx, scores, True, targets=targets, **kwargs)
        return [self.fuse_cams(cams, target_shape, normalized)]

    @staticmethod
    def fuse_cams(
        cams: list[Tensor],
        target_shape: tuple[int, ...] | None = None,
        normalized: bool = True,
    ) -> Tensor:
        """Normalize, resize to ``target_shape`` (default: the largest), multiply, normalize.

        A static method, as torchcam's: ``RefineCAM.fuse_cams(cams)`` needs no extractor.
        """
        if not normalized:
            raise ConfigError("camkit's RefineCAM always normalizes: use normalized=True")
        if not isinstance(cams, list) or not all(isinstance(c, Tensor) for c in cams):
            raise CompatTypeError("`cams` must be a list of tensors")
        refine: Any = contrib("RefineCAM").refine
        return refine(cams, target_shape)

    def __repr__(self) -> str:
        return (
            f"RefineCAM(base_method={type(self.base_cam).__name__}, "
            f"target_layer={self.target_names})"
        )
