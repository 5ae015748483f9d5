"""The guided-backpropagation pass: the gradient of the target score with respect to the
input, where every ReLU's backward passes only positive gradients (Springenberg et al., 2015).

The ReLUs are guided for the duration of one forward pass by a torch function mode
(:class:`GuidedReLUs`), never by replacing or hooking the model's modules: the mode sees every
``relu`` the forward calls, whether through an ``nn.ReLU`` module, ``F.relu``, ``torch.relu``
or ``Tensor.relu`` (in place or not), and hands the rest of the model the ReLU's output through
:class:`PositiveGradient`, an identity whose backward keeps only the positive part of the
incoming gradient. ReLU's own backward then masks it by the positive inputs, so each ReLU
passes ``grad * (grad > 0) * (input > 0)``. Torch function modes belong to the thread that
enters them, so other threads using the model at the same time are unaffected, and nothing
is left behind on the model, also when it raises.

Not guided: activations other than ``relu`` (``relu6``, ``leaky_relu``, GELU, ...), and an
in-place ``relu_`` whose return value the model discards (``x.relu_()`` as a statement: its
gate has no consumer). A forward in which no ReLU ran gives the plain input gradient, with a
:class:`~camkit.errors.CamkitWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from camkit.engine.capture import grad_enabled
from camkit.errors import CamkitWarning, GradientError

if TYPE_CHECKING:
    from camkit.engine.services import Services

#: The functions that compute a ReLU, however the model calls them.
RELUS: frozenset[Callable[..., Any]] = frozenset(
    {F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_}
)


class PositiveGradient(torch.autograd.Function):
    """Identity forward (a copy, so later in-place ops leave the ReLU's output alone);
    the backward keeps the positive part of the incoming gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp_min(0)


class GuidedReLUs(TorchFunctionMode):
    """While entered (in this thread), every ReLU output that is part of an autograd graph
    goes through :class:`PositiveGradient`; ``count`` says how many did."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in RELUS and isinstance(out, Tensor) and out.requires_grad:
            self.count += 1
            return PositiveGradient.apply(out)
        return out


def guided_gradients(door: Services) -> Tensor:
    """``(B, C_in, H, W)`` d(target score)/d(input) with guided ReLUs, chunk by chunk.

    The input's own gradient is never touched: each chunk is a detached copy.
    """
    x = door.inputs
    parts = []
    for start, stop in door.chunks(x.shape[0], "guided backpropagation"):
        chunk = x[start:stop].detach().clone().requires_grad_(True)
        index = torch.arange(start, stop, device=chunk.device)
        layout = door.accel.explain_channels_last(chunk)  # before any hook (may be measured)
        with grad_enabled():
            guide = GuidedReLUs()
            with guide:
                out = door.run(door.model, chunk, layout)[0]
            total = door.chosen.score(out, index).sum()
            if not total.requires_grad:
                raise GradientError(
                    "the target score does not depend on the input through differentiable "
                    "operations (does the model detach or run under torch.no_grad()?)"
                )
            (grad,) = torch.autograd.grad(total, [chunk])
        if guide.count == 0:
            warnings.warn(
                "no ReLU ran in the model's forward pass: guided backpropagation is the plain "
                "input gradient here",
                CamkitWarning,
                stacklevel=2,
            )
        if not bool(torch.isfinite(grad).all()):
            raise GradientError("the guided gradient at the input has NaN or Inf values")
        parts.append(grad.contiguous())
    return torch.cat(parts)
