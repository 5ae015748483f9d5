"""torchcam 0.5.0's ``torchcam.metrics``, computed by :mod:`camkit.metrics`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit import metrics
from camkit.compat._shared import CompatTypeError, eval_mode
from camkit.errors import CamkitError, InputError, TargetError

__all__ = ["ClassificationMetric", "DeletionInsertionMetric", "NotUpdatedError"]


class NotUpdatedError(CamkitError, AssertionError):
    """``summary()`` before any ``update`` (an ``AssertionError``, as in torchcam)."""


class _Metric:
    """The protocol both metrics share: score the batch, explain it, perturb it."""

    #: samples whose map had a NaN, left out of the summary (as torchcam).
    nan_count: int

    def __init__(self, cam_extractor: Any, logits_fn: Callable[[Any], Any] | None = None) -> None:
        self.cam_extractor = cam_extractor
        self.logits_fn = logits_fn
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def _scores(self, x: Tensor) -> Tensor:
        logits = self.cam_extractor.model(x)
        return logits if self.logits_fn is None else self.logits_fn(logits)

    def _silent_scores(self, x: Tensor) -> Tensor:
        with self.cam_extractor._hooks_off():
            return self._scores(x)

    def _explain(
        self, x: Tensor, class_idx: int | list[int] | None, targets: Any
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(maps (B, H, W), class indices (B,), target scores (B,))`` of the batch."""
        if targets is not None:
            raise TargetError(
                "camkit's torchcam metrics take class_idx; output targets are not supported yet"
            )
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(x.ndim - 2)
        if mode is None:
            raise InputError("only 1D, 2D, and 3D spatial inputs are supported")
        scores = self._scores(x)
        batch, num_classes = scores.shape
        if class_idx is None:
            indices = scores.argmax(-1)
        else:
            listed = class_idx if isinstance(class_idx, list) else [class_idx] * batch
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in listed):
                raise CompatTypeError(f"class_idx must be an int or a list of ints: {class_idx!r}")
            if len(listed) != batch or any(not 0 <= i < num_classes for i in listed):
                raise TargetError(
                    f"class_idx {class_idx!r} must be in [0, {num_classes - 1}], one per sample "
                    f"or one for the batch of {batch}"
                )
            indices = torch.tensor(listed, device=scores.device)
        cams = self.cam_extractor(
            class_idx if isinstance(class_idx, int) else indices.tolist(), scores
        )
        cam = self.cam_extractor.fuse_cams(cams)
        cam = F.interpolate(cam.unsqueeze(1), x.shape[2:], mode=mode, align_corners=False)
        chosen = scores.detach().gather(1, indices[:, None])[:, 0]
        return cam.squeeze(1).detach(), indices, chosen

    def _finite(self, *batch: Tensor) -> tuple[Tensor, ...]:
        """The samples whose map has no NaN (counted in ``nan_count`` otherwise), as
        torchcam; ``batch[0]`` is the maps."""
        keep = ~batch[0].isnan().flatten(1).any(1)
        self.nan_count += int((~keep).sum())
        return tuple(t[keep] for t in batch)


class ClassificationMetric(_Metric):
    r"""Average drop and increase in confidence (Grad-CAM++ paper), by
    :func:`camkit.metrics.average_drop` and :func:`camkit.metrics.increase_in_confidence`.

    Example:
        >>> from functools import partial
        >>> from camkit.compat.torchcam.methods import GradCAM
        >>> from camkit.compat.torchcam.metrics import ClassificationMetric
        >>> cam_extractor = GradCAM(model, "layer4")
        >>> metric = ClassificationMetric(cam_extractor, partial(torch.softmax, dim=-1))
        >>> metric.update(input_tensor)
        >>> metric.summary()
        {'avg_drop': ..., 'conf_increase': ...}
    """

    def update(
        self,
        input_tensor: Tensor,
        class_idx: int | list[int] | None = None,
        *,
        targets: Any = None,
    ) -> None:
        """Add a batch: explain it, then score it masked by its maps."""
        with eval_mode(self.cam_extractor.model):
            result = self._explain(input_tensor, class_idx, targets)
            cam, indices, scores, input_tensor = self._finite(*result, input_tensor)
            if cam.shape[0] == 0:
                return
            with torch.inference_mode():
                masked = self._silent_scores(metrics.explanation_maps(input_tensor, cam))
            explained = masked.gather(1, indices[:, None])[:, 0]
        self.drop += metrics.average_drop(scores, explained).sum().item()
        self.increase += metrics.increase_in_confidence(scores, explained).sum().item()
        self.total += cam.shape[0]

    def summary(self) -> dict[str, float]:
        """``{"avg_drop": ..., "conf_increase": ...}`` over every update."""
        if self.total == 0:
            raise NotUpdatedError("update the metric before asking for its summary")
        return {"avg_drop": self.drop / self.total, "conf_increase": self.increase / self.total}

    def reset(self) -> None:
        """Forget every update."""
        self.drop = 0.0
        self.increase = 0.0
        self.total = 0
        self.nan_count = 0


class DeletionInsertionMetric(_Metric):
    r"""Deletion and insertion AUCs (RISE paper), by :func:`camkit.metrics.perturbation_curve`.

    Positions are ranked by the map; ``steps`` intervals of ``ceil(H W / steps)`` positions;
    the areas are integrated against the fraction of positions actually changed.

    Example:
        >>> from functools import partial
        >>> from camkit.compat.torchcam.methods import GradCAM
        >>> from camkit.compat.torchcam.metrics import DeletionInsertionMetric
        >>> cam_extractor = GradCAM(model, "layer4")
        >>> metric = DeletionInsertionMetric(cam_extractor, partial(torch.softmax, dim=-1))
        >>> metric.update(input_tensor)
        >>> metric.summary()
        {'deletion_auc': ..., 'insertion_auc': ...}
    """

    def __init__(
        self,
        cam_extractor: Any,
        logits_fn: Callable[[Any], Any] | None = None,
        *,
        steps: int = 20,
        baseline: Tensor | Callable[[Tensor], Tensor] | None = None,
        batch_size: int = 32,
    ) -> None:
        for name, value in (("steps", steps), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise CompatTypeError(f"{name} must be an integer, got {value!r}")
            if value <= 0:
                raise InputError(f"{name} must be positive, got {value}")
        if baseline is not None and not isinstance(baseline, Tensor) and not callable(baseline):
            raise CompatTypeError("baseline must be a tensor, a callable, or None")
        self.steps = steps
        self.baseline = baseline
        self.batch_size = batch_size
        super().__init__(cam_extractor, logits_fn)

    def _baseline(self, x: Tensor) -> Tensor:
        if self.baseline is None:
            return torch.zeros_like(x)
        base = self.baseline if isinstance(self.baseline, Tensor) else self.baseline(x)
        if not isinstance(base, Tensor):
            raise CompatTypeError("the baseline callable must return a tensor")
        try:
            return torch.broadcast_to(base.to(x), x.shape)
        except RuntimeError:
            raise InputError(
                f"baseline of shape {tuple(base.shape)} does not broadcast to {tuple(x.shape)}"
            ) from None

    def update(
        self,
        input_tensor: Tensor,
        class_idx: int | list[int] | None = None,
        *,
        targets: Any = None,
    ) -> None:
        """Add a batch: explain it, then delete and insert its pixels by rank."""
        with eval_mode(self.cam_extractor.model):
            cam, indices, _ = self._explain(input_tensor, class_idx, targets)
            with torch.no_grad():
                fill = self._baseline(input_tensor)
            cam, indices, input_tensor, fill = self._finite(cam, indices, input_tensor, fill)
            if cam.shape[0] == 0:
                return
            positions = cam[0].numel()
            step = -(-positions // self.steps)
            counts = [*range(0, positions, step), positions]
            fractions = torch.tensor(counts, dtype=torch.float32) / positions
            aucs = []
            for mode in ("deletion", "insertion"):
                curve = metrics.perturbation_curve(
                    self._silent_scores, input_tensor, cam, indices, mode=mode, step=step,
                    substrate=fill, softmax=False, batch_size=self.batch_size,
                )  # fmt: skip
                aucs.append(torch.trapezoid(curve.float(), fractions, dim=1))
        self.deletion += aucs[0].sum().item()
        self.insertion += aucs[1].sum().item()
        self.total += input_tensor.shape[0]

    def summary(self) -> dict[str, float]:
        """``{"deletion_auc": ..., "insertion_auc": ...}`` averaged over every update."""
        if self.total == 0:
            raise NotUpdatedError("update the metric before asking for its summary")
        return {
            "deletion_auc": self.deletion / self.total,
            "insertion_auc": self.insertion / self.total,
        }

    def reset(self) -> None:
        """Forget every update."""
        self.deletion = 0.0
        self.insertion = 0.0
        self.total = 0
        self.nan_count = 0
