"""Targeting: turning the ``targets`` argument into class indices and a scoring function,
and ``targets="all-positive"`` into one ``(image, label)`` row per positive label.

(The ready-made target callables users pass are the public module :mod:`camkit.targets`.)
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camkit.engine.checks import NON_FINITE_INPUT, all_finite, check_input
from camkit.engine.outputs import scores_of
from camkit.errors import InputError, ModelOutputError, TargetError, did_you_mean
from camkit.targets import ALL_POSITIVE, AllPositive, TargetFn, Targets


@dataclass
class ResolvedTargets:
    """Class indices ``(B,)`` (``-1`` under a callable) and the functions that score rows.

    ``raw(rows, index)`` is the target score of each row without a finiteness check (the
    extractor checks its results all at once); ``index=None`` means one row per image, in
    order. :meth:`score` checks.
    """

    indices: Tensor
    raw: Callable[[Tensor, Tensor | None], Tensor]

    def score(self, rows: Tensor, index: Tensor | None = None) -> Tensor:
        """The target score of each row; a non-finite score is a :class:`ModelOutputError`."""
        return _finite(self.raw(rows, index), index)


def resolve_targets(targets: Targets, scores: Tensor) -> ResolvedTargets:
    """Validate ``targets`` against the clean ``scores`` of a batch."""
    batch = scores.shape[0]
    if callable(targets) and not isinstance(targets, Tensor):
        # A callable that explains one class per image may say which (``class_indices``).
        classes = getattr(targets, "class_indices", None)
        indices = torch.full((batch,), -1, dtype=torch.long)
        if callable(classes):
            indices = torch.as_tensor(classes(scores.detach())).long().reshape(batch).cpu()
        return ResolvedTargets(indices, _shape_checked(_with_index(targets)))
    if scores.dim() != 2:
        raise TargetError(
            f"the model's scores have shape {tuple(scores.shape)}; class-index targets need "
            "(B, num_classes) scores. Pass a callable target instead."
        )
    num_classes = scores.shape[1]
    if targets is None:
        indices = scores.detach().argmax(1).cpu()
    else:
        ints = _as_ints(targets, batch)  # checked in Python: cheaper than torch for a few
        if ints is not None:
            bad = [i for i in ints if not 0 <= i < num_classes]
            if bad:
                raise _out_of_range(bad[0], num_classes)
            if ints.count(ints[0]) == batch:
                return _one_class(ints[0], batch)
            indices = torch.tensor(ints, dtype=torch.long)
        else:
            indices = _as_indices(targets, batch)
            out = (indices < 0) | (indices >= num_classes)
            if bool(out.any()):
                raise _out_of_range(int(indices[out][0]), num_classes)
    columns = indices.to(scores.device).unsqueeze(1)

    def raw(rows: Tensor, index: Tensor | None) -> Tensor:
        return rows.gather(1, columns if index is None else columns[index]).squeeze(1)

    return ResolvedTargets(indices, raw)


def _one_class(index: int, batch: int) -> ResolvedTargets:
    """Class ``index`` for every image: the score column itself, without a gather."""

    def raw(rows: Tensor, _index: Tensor | None) -> Tensor:
        return rows[:, index]

    return ResolvedTargets(torch.full((batch,), index, dtype=torch.long), raw)


def all_positive(targets: str | AllPositive) -> AllPositive:
    """The :class:`AllPositive` that ``targets`` names (a string other than
    ``"all-positive"`` is a :class:`TargetError`)."""
    if isinstance(targets, AllPositive):
        return targets
    key = targets.strip().lower().replace("_", "-")
    if key == ALL_POSITIVE:
        return AllPositive()
    raise TargetError(
        f"unknown targets {targets!r}: the string target is {ALL_POSITIVE!r} (one map per "
        f"positive label of a multi-label classifier).{did_you_mean(key, [ALL_POSITIVE])} "
        "Class names are not targets: pass the class index"
    )


def positive_pairs(
    spec: AllPositive, model: Callable[[Tensor], object], x: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, labels, scores)``: the model's clean ``(B, K)`` logits of ``x`` (one forward
    under inference mode) and their positive ``(image, label)`` pairs (:meth:`AllPositive.pairs`).
    """
    try:
        with torch.inference_mode():
            scores = scores_of(model(x))
    except Exception as exc:
        if not all_finite(x):  # a model may fail on NaN: say so
            raise InputError(NON_FINITE_INPUT) from exc
        raise
    images, labels = spec.pairs(scores)
    bad = ~torch.isfinite(scores).all(1)
    if bool(bad.any()):
        check_input(x)  # a non-finite input is the cause
        raise ModelOutputError(
            f"the logits of image {int(bad.nonzero()[0, 0])} are not finite, so which of its "
            "labels are positive is undefined (targets='all-positive')"
        )
    return images, labels, scores


def check_scores(scores: Tensor) -> None:
    """One target score per image, each finite (else a :class:`ModelOutputError`)."""
    _finite(scores, None)


def _finite(out: Tensor, index: Tensor | None) -> Tensor:
    # A NaN score would surface later as NaN weights, blamed on the method.
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        image = row if index is None else int(index[row])
        raise ModelOutputError(
            f"the explained score of image {image} is {float(out.detach()[row])} "
            "(the model's output, or the target computed from it, is not finite for this input)"
        )
    return out


def _out_of_range(index: int, num_classes: int) -> TargetError:
    return TargetError(
        f"target class {index} is out of range: the model has {num_classes} classes, so "
        f"targets must be in [0, {num_classes - 1}]"
    )


def _as_ints(targets: Any, batch: int) -> list[int] | None:
    """``batch`` class indices from a Python int or a list/tuple of ints; ``None`` for any
    other form (which :func:`_as_indices` reads, or rejects with the reason)."""
    if type(targets) is int:
        return [targets] * batch
    if type(targets) in (list, tuple) and len(targets) == batch:
        return list(targets) if all(type(t) is int for t in targets) else None
    return None


def _as_indices(targets: Any, batch: int) -> Tensor:
    if isinstance(targets, (bool, np.bool_)):
        raise TargetError("a target is a class index, not a bool")
    if isinstance(targets, numbers.Integral):
        return torch.full((batch,), int(targets), dtype=torch.long)
    if isinstance(targets, np.ndarray):
        targets = torch.from_numpy(targets)
    if isinstance(targets, Tensor):
        if targets.dim() == 0:
            targets = targets.reshape(1).expand(batch)
        if (
            targets.dim() != 1
            or targets.is_floating_point()
            or targets.is_complex()
            or targets.dtype == torch.bool
        ):
            raise TargetError(
                f"target tensors must be 1-D integer class indices, got {targets.dtype} of "
                f"shape {tuple(targets.shape)}"
            )
        indices = targets.detach().to("cpu", torch.long)
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        if not all(
            isinstance(t, numbers.Integral) and not isinstance(t, (bool, np.bool_)) for t in targets
        ):
            raise TargetError(f"targets must be class indices (ints), got {list(targets)!r}")
        indices = torch.tensor([int(t) for t in targets], dtype=torch.long)
    else:
        if isinstance(targets, str):
            all_positive(targets)  # "did you mean 'all-positive'?"
        raise TargetError(
            "targets must be None (the predicted class), an int, a list of ints, a 1-D tensor "
            f"or array, a callable, or 'all-positive', not {type(targets).__name__}"
        )
    if indices.numel() != batch:
        raise TargetError(f"got {indices.numel()} targets for a batch of {batch} images")
    return indices


def _with_index(fn: TargetFn) -> Callable[[Tensor, Tensor], Tensor]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return lambda rows, index: fn(rows, index)
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional):
        return lambda rows, index: fn(rows, index)
    return lambda rows, index: fn(rows)


def _shape_checked(
    fn: Callable[[Tensor, Tensor], Tensor],
) -> Callable[[Tensor, Tensor | None], Tensor]:
    def raw(rows: Tensor, index: Tensor | None) -> Tensor:
        if index is None:
            index = torch.arange(rows.shape[0], device=rows.device)
        out = fn(rows, index)
        if not isinstance(out, Tensor) or out.shape != (rows.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise TargetError(
                f"a callable target must return one score per row, shape ({rows.shape[0]},); "
                f"it returned {shape}"
            )
        return out

    return raw
