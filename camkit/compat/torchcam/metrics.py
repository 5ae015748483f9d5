"""torchcam 0.5.0's ``torchcam.metrics``, computed by :mod:`camkit.metrics`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit import metrics
from camkit.compat._shared import CompatTypeError, eval_mode
from camkit.compat.torchcam.methods.core import OutputTarget, _per_sample
from camkit.errors import CamkitError, InputError, ModelOutputError, TargetError

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

    def _explain(self, x: Tensor, class_idx: int | list[int] | None, targets: Any) -> _Explained:
        """The batch's maps ``(B, H, W)`` and what each sample's score is (its class index, or
        its output target), with the scores of the unperturbed batch."""
        if targets is not None and class_idx is not None:
            raise TargetError("provide either class_idx or targets, not both")
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(x.ndim - 2)
        if mode is None:
            raise InputError("only 1D, 2D, and 3D spatial inputs are supported")
        scores = self._scores(x)
        if targets is not None:
            fns = _per_sample(targets, x.shape[0])
            cams = self.cam_extractor(scores=scores, targets=fns)
            indices, chosen = None, _target_values(scores, fns).detach()
        else:
            fns = None
            indices = self._class_indices(scores, class_idx)
            cams = self.cam_extractor(
                class_idx if isinstance(class_idx, int) else indices.tolist(), scores
            )
            chosen = scores.detach().gather(1, indices[:, None])[:, 0]
        cam = self.cam_extractor.fuse_cams(cams)
        cam = F.interpolate(cam.unsqueeze(1), x.shape[2:], mode=mode, align_corners=False)
        return _Explained(cam.squeeze(1).detach(), indices, fns, chosen)

    @staticmethod
    def _class_indices(scores: Tensor, class_idx: int | list[int] | None) -> Tensor:
        batch, num_classes = scores.shape
        if class_idx is None:
            return scores.argmax(-1)
        listed = class_idx if isinstance(class_idx, list) else [class_idx] * batch
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in listed):
            raise CompatTypeError(f"class_idx must be an int or a list of ints: {class_idx!r}")
        if len(listed) != batch or any(not 0 <= i < num_classes for i in listed):
            raise TargetError(
                f"class_idx {class_idx!r} must be in [0, {num_classes - 1}], one per sample "
                f"or one for the batch of {batch}"
            )
        return torch.tensor(listed, device=scores.device)

    def _finite(self, explained: _Explained, *batch: Tensor) -> tuple[_Explained, list[Tensor]]:
        """The samples whose map has no NaN (counted in ``nan_count`` otherwise), as
        torchcam."""
        keep = ~explained.cam.isnan().flatten(1).any(1)
        self.nan_count += int((~keep).sum())
        return explained.subset(keep), [t[keep] for t in batch]

    def _picked(self, output: Any, explained: _Explained) -> Tensor:
        """Each sample's score in the model's (``logits_fn``'s) ``output`` for a batch of the
        explained samples."""
        if explained.targets is not None:
            return _target_values(output, explained.targets)
        assert explained.indices is not None
        return output.gather(1, explained.indices[:, None])[:, 0]


def _target_values(output: Any, targets: list[OutputTarget]) -> Tensor:
    """``(B,)``: each sample's output target applied to its row of the output (a batched
    tensor, or a list with one entry per sample)."""
    if isinstance(output, Tensor) and output.ndim > 0:
        rows: Sequence[Any] = output.unbind(0)
    elif isinstance(output, list):
        rows = output
    else:
        raise ModelOutputError(
            "output targets need the model's output as a batched tensor or a list with one "
            f"entry per sample, got {type(output).__name__}"
        )
    if len(rows) != len(targets):
        raise TargetError(f"got {len(targets)} output targets for {len(rows)} outputs")
    values = [target(row) for target, row in zip(targets, rows)]
    if not all(isinstance(v, Tensor) for v in values):
        raise CompatTypeError("an output target must return a tensor")
    if not all(v.numel() == 1 for v in values):
        raise TargetError("an output target must return a scalar tensor for each sample")
    return torch.stack([v.reshape(()) for v in values])


@dataclass
class _Explained:
    """A batch's maps and the scores they explain: class ``indices`` or output ``targets``
    (one of them), and ``scores``, each sample's score on the unperturbed input."""

    cam: Tensor
    indices: Tensor | None
    targets: list[OutputTarget] | None
    scores: Tensor

    def __len__(self) -> int:
        return self.cam.shape[0]

    def subset(self, keep: Tensor) -> _Explained:
        indices = None if self.indices is None else self.indices[keep]
        targets = None
        if self.targets is not None:
            targets = [t for t, k in zip(self.targets, keep.tolist()) if k]
        return _Explained(self.cam[keep], indices, targets, self.scores[keep])


class ClassificationMetric(_Metric):
    r"""Average drop and increase in confidence (Grad-CAM++ paper), by
    :func:`camkit.metrics.average_drop` and :func:`camkit.metrics.increase_in_confidence`.

    ``update`` explains each sample's class (``class_idx``, or its top predicted class) or, as
    in torchcam, an output target (``targets=``), and scores the sample by the same choice.

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
        targets: OutputTarget | list[OutputTarget] | None = None,
    ) -> None:
        """Add a batch: explain it, then score it masked by its maps.

        Args:
            input_tensor: the model's input batch.
            class_idx: a class index for the batch, one per sample, or ``None`` (each sample's
                top predicted class).
            targets: instead of ``class_idx``, an output target (a callable from one
                sample's output, after ``logits_fn``, to a scalar tensor) for the batch, or
                one per sample; the maps explain it and the scores are its values.

        Raises:
            TargetError: both ``class_idx`` and ``targets``, a class index out of range, a
                count that does not match the batch, or a target whose value is not a scalar.
            CompatTypeError: ``class_idx`` not integers, ``targets`` not callables, or a
                target that does not return a tensor.
        """
        with eval_mode(self.cam_extractor.model):
            explained, (input_tensor,) = self._finite(
                self._explain(input_tensor, class_idx, targets), input_tensor
            )
            if len(explained) == 0:
                return
            with torch.inference_mode():
                masked = self._silent_scores(metrics.explanation_maps(input_tensor, explained.cam))
                masked_scores = self._picked(masked, explained)
        self.drop += metrics.average_drop(explained.scores, masked_scores).sum().item()
        self.increase += (
            metrics.increase_in_confidence(explained.scores, masked_scores).sum().item()
        )
        self.total += len(explained)

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
    the areas are integrated against the fraction of positions actually changed. ``update``
    takes class indices or, as in torchcam, output targets (``targets=``): the curves are then
    the targets' values (the samples sharing a target are scored together).

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
        targets: OutputTarget | list[OutputTarget] | None = None,
    ) -> None:
        """Add a batch: explain it, then delete and insert its pixels by rank.

        Args:
            input_tensor: the model's input batch.
            class_idx: a class index for the batch, one per sample, or ``None`` (each sample's
                top predicted class).
            targets: instead of ``class_idx``, an output target (a callable from one
                sample's output, after ``logits_fn``, to a scalar tensor) for the batch, or
                one per sample; the maps explain it and the scores are its values.

        Raises:
            TargetError: both ``class_idx`` and ``targets``, a class index out of range, a
                count that does not match the batch, or a target whose value is not a scalar.
            CompatTypeError: ``class_idx`` not integers, ``targets`` not callables, or a
                target that does not return a tensor.
        """
        with eval_mode(self.cam_extractor.model):
            explained = self._explain(input_tensor, class_idx, targets)
            with torch.no_grad():
                fill = self._baseline(input_tensor)
            explained, (input_tensor, fill) = self._finite(explained, input_tensor, fill)
            if len(explained) == 0:
                return
            positions = explained.cam[0].numel()
            step = -(-positions // self.steps)
            counts = [*range(0, positions, step), positions]
            fractions = torch.tensor(counts, dtype=torch.float32) / positions
            modes: tuple[Literal["deletion", "insertion"], ...] = ("deletion", "insertion")
            aucs = [
                torch.trapezoid(self._curves(input_tensor, fill, explained, mode, step), fractions)
                for mode in modes
            ]
        self.deletion += aucs[0].sum().item()
        self.insertion += aucs[1].sum().item()
        self.total += len(explained)

    def _curves(
        self,
        x: Tensor,
        fill: Tensor,
        explained: _Explained,
        mode: Literal["deletion", "insertion"],
        step: int,
    ) -> Tensor:
        """``(B, steps + 1)`` float32 scores of each sample as its pixels are deleted or
        inserted; with output targets, the samples sharing a target are scored together."""
        curve = partial(
            metrics.perturbation_curve, mode=mode, step=step, softmax=False,
            batch_size=self.batch_size,
        )  # fmt: skip
        if explained.targets is None:
            assert explained.indices is not None
            return curve(
                self._silent_scores, x, explained.cam, explained.indices, substrate=fill
            ).float()
        groups: dict[int, list[int]] = {}
        for i, target in enumerate(explained.targets):
            groups.setdefault(id(target), []).append(i)
        curves = torch.empty(0)
        for members in groups.values():
            target = explained.targets[members[0]]

            def scored(batch: Tensor, target: OutputTarget = target) -> Tensor:
                return _target_values(self._silent_scores(batch), [target] * len(batch))[:, None]

            rows = torch.tensor(members, device=x.device)
            zeros = torch.zeros(len(members), dtype=torch.long, device=x.device)
            part = curve(scored, x[rows], explained.cam[rows], zeros, substrate=fill[rows])
            if curves.numel() == 0:
                curves = part.new_empty((len(explained), part.shape[1]))
            curves[rows.cpu()] = part
        return curves.float()

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
