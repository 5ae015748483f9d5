"""Acceleration: how the engine's forward passes run fastest on this hardware.

The engine asks one question, through :func:`accelerator`: given a model and the run
options, how should a forward pass be run (which module to call, in which dtype and memory
layout)? Everything that answers it (hardware probing, the reduced-precision inference copy,
layout heuristics) lives in this subpackage, and private torch APIs are confined here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camkit.engine.accel.hardware import Capabilities, capabilities
from camkit.engine.accel.inference import inference_copy

__all__ = ["Accelerator", "Capabilities", "ForwardPlan", "accelerator", "capabilities"]


@dataclass(frozen=True)
class ForwardPlan:
    """How to run one kind of forward pass.

    Attributes:
        model: the module to call: the user's model or a reduced-precision inference copy.
        dtype: the dtype to build its inputs in.
        autocast: run under bfloat16 autocast (reduced precision without a copy).
        channels_last: forward 4-D inputs in channels-last memory layout.
    """

    model: nn.Module
    dtype: torch.dtype
    autocast: bool
    channels_last: bool


class Accelerator:
    """What is known about one model (looked at once) and how to run it.

    Args:
        model: the model; it is never modified.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` for the scoring forwards.
        channels_last: ``None`` (where faster), ``False`` (never), ``True`` (always).
    """

    def __init__(self, model: nn.Module, *, precision: str, channels_last: bool | None) -> None:
        self.model = model
        self.precision = precision
        self.option = channels_last
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        self._convs = bool(convs)
        self._grouped = any(m.groups > 1 for m in convs)
        # False once the model rejected a channels-last input.
        self._layout_ok = channels_last is not False

    def explain_channels_last(self, x: Tensor) -> bool:
        """Whether the explained (clean) forward gets a channels-last copy of ``x``.

        On CPU, torch's convolutions run faster on channels-last inputs from batch 2 on, and
        at batch 1 for models with grouped (depthwise) convolutions; ResNet-18 at batch 1 is
        a few percent slower, so a batch of one goes as given to models without them.
        """
        if not self._layout_ok or x.dim() != 4:
            return False
        if x.is_contiguous(memory_format=torch.channels_last):
            return False
        if self.option is True:
            return True
        return self._convs and x.device.type == "cpu" and (x.shape[0] > 1 or self._grouped)

    def scoring(self, inputs: Tensor) -> ForwardPlan:
        """How to forward batches of perturbed copies of ``inputs`` (under inference mode)."""
        layout = inputs.dim() == 4 and self._layout_ok and (self.option is True or self._convs)
        if effective_precision(self.precision, inputs.device) == "bf16":
            copied = inference_copy(self.model, torch.bfloat16)
            if copied is not None:
                return ForwardPlan(copied, torch.bfloat16, False, layout)
            return ForwardPlan(self.model, inputs.dtype, True, layout)
        return ForwardPlan(self.model, inputs.dtype, False, layout)

    def rejected_channels_last(self) -> None:
        """Remember that the model failed on a channels-last input: run it as given."""
        self._layout_ok = False


def accelerator(
    model: nn.Module, *, precision: str = "fp32", channels_last: bool | None = None
) -> Accelerator:
    """The :class:`Accelerator` for ``model`` under the given run options."""
    return Accelerator(model, precision=precision, channels_last=channels_last)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a request resolves to on ``device``: ``"auto"`` becomes ``"bf16"``
    where bfloat16 is native, else ``"fp32"``."""
    if precision == "auto":
        return "bf16" if capabilities(device.type).bf16_native else "fp32"
    return precision
