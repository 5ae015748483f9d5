"""Finer-CAM's contrastive objective, as a camkit target usable with any gradient method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from camkit.errors import TargetError

if TYPE_CHECKING:
    from torch import Tensor

Weighting = Literal["mean", "softmax"]


class FinerTarget:
    r"""Finer-CAM: explain what separates the target class from the classes it is confused with.

    With :math:`y` the logits of a row, :math:`c` its target class and :math:`d_1 .. d_T` the
    reference classes (by default the ``num_references`` classes whose logits are closest to
    :math:`y_c`, the target excluded), the score explained is

    .. math::

        s_{mean} = y_c - \gamma \frac{1}{T} \sum_{t=1}^T y_{d_t}
        \qquad \text{or} \qquad
        s_{softmax} = \frac{\sum_t p_{d_t} \, (y_c - \gamma\, y_{d_t})}{\sum_t p_{d_t} + 10^{-9}},
        \quad p = softmax(y)

    (``weighting="mean"`` or ``"softmax"``; in the softmax form :math:`p` is differentiated
    too). Passed as ``targets=`` to a gradient method, the method's map becomes Finer-CAM with
    that base method: ``camkit.create("gradcam", model, "layer4")(x, targets=FinerTarget())``.
    torchcam's ``FinerCAM`` is ``FinerTarget(class_index, strength=0.6)`` (its default
    ``gamma``); pytorch-grad-cam's ``FinerCAM`` is ``FinerTarget(strength=1.0,
    weighting="softmax")`` (its default ``alpha``).

    References are chosen from the scores the target is called with, detached: with gradient
    methods those are the clean scores. Perturbation methods call targets on masked copies
    of the images, whose closest classes differ; give them fixed ``references``.

    Paper: Zhang et al., *Finer-CAM: Spotting the Difference Reveals Finer Details for Visual
    Explanation*, CVPR 2025.

    Args:
        class_index: the target class :math:`c`: ``None`` for each row's top class, an int
            for every image, or one per image (a sequence or 1-D tensor of ``B`` ints).
        references: the reference classes: ``None`` to choose the closest ones, a sequence
            of ints for every image, or a ``(B, T)`` tensor, one row per image.
        num_references: :math:`T` when the references are chosen (capped by the number of
            other classes).
        strength: :math:`\gamma`, how much of the references' score is subtracted.
        weighting: ``"mean"`` or ``"softmax"``, the two forms above.

    Example:
        >>> cam = camkit.create("gradcam", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(2), targets=FinerTarget(num_references=2)).maps.shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        class_index: int | Sequence[int] | Tensor | None = None,
        references: Sequence[int] | Tensor | None = None,
        *,
        num_references: int = 3,
        strength: float = 0.6,
        weighting: Weighting = "mean",
    ) -> None:
        import torch

        if weighting not in ("mean", "softmax"):
            raise TargetError(
                f"FinerTarget's weighting must be 'mean' or 'softmax', got {weighting!r}"
            )
        if (
            isinstance(num_references, bool)
            or not isinstance(num_references, int)
            or num_references < 1
        ):
            raise TargetError(
                f"FinerTarget's num_references must be a positive int, got {num_references!r}"
            )
        self.classes = None if class_index is None else torch.as_tensor(class_index).long()
        self.references = None if references is None else torch.as_tensor(references).long()
        self.num_references = num_references
        self.strength = float(strength)
        self.weighting = weighting

    def _per_row(self, value: Tensor, index: Tensor, rows: int, what: str) -> Tensor:
        """``value`` for every row: shared (``dim`` one less than per-image) or per image."""
        value = value.to(index.device)
        if value.dim() == 0 or (what == "references" and value.dim() == 1):
            return value.expand(rows, *value.shape)
        if int(index.max()) >= value.shape[0]:
            raise TargetError(
                f"FinerTarget's {what} has {value.shape[0]} entries (one per image) but the "
                f"batch has {int(index.max()) + 1} or more images"
            )
        return value[index]

    @staticmethod
    def _check_range(classes: Tensor, num_classes: int) -> None:
        if bool(((classes < 0) | (classes >= num_classes)).any()):
            raise TargetError(
                f"FinerTarget classes {classes.unique().tolist()} are out of range: the model "
                f"has {num_classes} classes, so they must be in [0, {num_classes - 1}]"
            )

    def class_indices(self, scores: Tensor) -> Tensor:
        """``(B,)`` the class :math:`c` of each image of the clean ``scores`` (reported by the
        engine as the result's ``targets``)."""
        import torch

        rows = scores.shape[0]
        if self.classes is None:
            return scores.detach().argmax(1)
        index = torch.arange(rows, device=scores.device)
        target = self._per_row(self.classes, index, rows, "class_index").to(scores.device)
        self._check_range(target, scores.shape[1])
        return target

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.dim() != 2 or scores.shape[1] < 2:
            raise TargetError(
                "FinerTarget needs (N, num_classes) scores with at least 2 classes, got shape "
                f"{tuple(scores.shape)}"
            )
        rows, num_classes = scores.shape
        logits = scores.detach()
        if self.classes is None:
            target = logits.argmax(1)
        else:
            target = self._per_row(self.classes, index, rows, "class_index").to(scores.device)
            self._check_range(target, num_classes)
        if self.references is None:
            distance = (logits - logits.gather(1, target[:, None])).abs()
            distance.scatter_(1, target[:, None], float("inf"))
            count = min(self.num_references, num_classes - 1)
            references = distance.topk(count, dim=1, largest=False).indices
        else:
            references = self._per_row(self.references, index, rows, "references").to(scores.device)
        self._check_range(references, num_classes)
        main = scores.gather(1, target[:, None])
        others = scores.gather(1, references)
        if self.weighting == "mean":
            return (main - self.strength * others.mean(1, keepdim=True)).squeeze(1)
        weights = scores.softmax(1).gather(1, references)
        weighted = (weights * (main - self.strength * others)).sum(1)
        return weighted / (weights.sum(1) + 1e-9)

    def __repr__(self) -> str:
        return (
            f"FinerTarget(strength={self.strength}, weighting={self.weighting!r}, "
            f"num_references={self.num_references})"
        )
