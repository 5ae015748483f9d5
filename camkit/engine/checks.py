"""Health checks of a call's tensors: what an input must be, and which tensor is at fault.

Finiteness is checked through sums (a sum is finite only when every term is, at a fraction
of the cost of an element-wise check); only a failing sum looks closer, to name the first
tensor at fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from camkit.errors import InputError

NON_FINITE_INPUT = "the input contains NaN or Inf values"


def validated_input(x: object, modules: Sequence[nn.Module]) -> Tensor:
    """``x`` detached, if it is a non-empty floating ``(B, C, H, W)`` or ``(B, C, T, H, W)``
    tensor on the model's device (``modules``: the model's, listed once; none, to skip that
    check); else an :class:`InputError` saying what was given and what is expected. Whether
    it is finite is checked only when something downstream is not (:func:`check_input`)."""
    if not isinstance(x, Tensor):
        raise InputError(f"the input must be a torch.Tensor, not {type(x).__name__}")
    if x.dim() == 3:
        raise InputError(
            f"the input has shape {tuple(x.shape)}: one image without a batch dimension; "
            "pass x.unsqueeze(0)"
        )
    if x.dim() not in (4, 5):
        raise InputError(
            f"the input must be (B, C, H, W) images or (B, C, T, H, W) videos, got shape "
            f"{tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise InputError(
            f"the input must be floating point, got {x.dtype}; convert with x.float() "
            "(and scale to the range the model was trained on)"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise InputError(f"the input is empty: shape {tuple(x.shape)}")
    param = next((p for m in modules for p in m._parameters.values() if p is not None), None)
    if param is not None and param.device != x.device:
        raise InputError(
            f"the input is on {x.device} but the model is on {param.device}; move one of them"
        )
    return x.detach() if x.requires_grad else x


def check_input(x: Tensor) -> None:
    """An :class:`InputError` when ``x`` holds NaN or Inf values.

    Checked when something downstream is not finite (or a model raises): a NaN the model
    ignores cannot reach the explanation, and one pass over a large batch is not free.
    """
    if not all_finite(x):
        raise InputError(NON_FINITE_INPUT)


def all_finite(t: Tensor) -> bool:
    """Whether every element of ``t`` is finite."""
    # A finite sum proves every element finite (one Inf or NaN makes the sum Inf or NaN); only
    # an overflowing sum needs the element-wise check.
    t = t.detach()
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def total_is_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every element of every tensor is finite, as far as their sums tell (an
    overflowing total is reported as not finite: the caller then looks closer)."""
    parts = [(t.detach() if t.requires_grad else t).sum() for t in tensors]
    # On the CPU reading each sum costs less than stacking them; a GPU syncs once.
    on_cpu = parts[0].device.type == "cpu"
    total = sum(p.item() for p in parts) if on_cpu else float(torch.stack(parts).sum())
    return math.isfinite(total)
