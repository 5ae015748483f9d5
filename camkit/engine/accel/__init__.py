"""Acceleration: how the engine's forward passes run fastest on this hardware.

The engine asks one question, through :func:`accelerator`: given a model and the run
options, how should a forward pass be run (which module to call, in which dtype and memory
layout)? Everything that answers it (hardware probing, the reduced-precision inference copy,
layout heuristics) lives in this subpackage, and private torch APIs are confined here.
"""

from __future__ import annotations

import functools
import threading
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from camkit.engine.accel import layout
from camkit.engine.accel.gate import auto_choice
from camkit.engine.accel.hardware import Capabilities, capabilities
from camkit.engine.accel.inference import inference_copy
from camkit.engine.accel.quantized import int8_copy
from camkit.errors import PerformanceWarning

__all__ = [
    "Accelerator",
    "Capabilities",
    "ForwardPlan",
    "accelerator",
    "capabilities",
    "effective_precision",
]


@dataclass(frozen=True)
class ForwardPlan:
    """How to run one kind of forward pass.

    Attributes:
        model: the module to call: the user's model or a reduced-precision inference copy.
        dtype: the dtype to build its inputs in.
        autocast: run under bfloat16 autocast (reduced precision without a copy).
        channels_last: forward 4-D inputs in channels-last memory layout.
        mode: what runs: ``"model"`` (the model as given), ``"fp32-copy"``, ``"bf16-copy"``,
            ``"bf16-autocast"`` or ``"int8-copy"`` (see docs/methods.md, Precision).
        provisional: ``"auto"`` chose without knowing the forwards' cost: ask again, with the
            seconds per row of the first chunk (:meth:`Accelerator.scoring`), for the rest.
    """

    model: nn.Module
    dtype: torch.dtype
    autocast: bool
    channels_last: bool
    mode: str = "model"
    provisional: bool = False


class Accelerator:
    """What is known about one model (looked at once) and how to run it.

    Args:
        model: the model; it is never modified.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` for the scoring forwards.
        channels_last: ``None`` (where faster), ``False`` (never), ``True`` (always).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
        >>> _ = model(torch.rand(1, 3, 8, 8)); model = model.eval()
        >>> accelerator(model, precision="fp32").scoring(torch.rand(1, 3, 8, 8)).mode
        'model'
    """

    def __init__(self, model: nn.Module, *, precision: str, channels_last: bool | None) -> None:
        self.model = model
        self.precision = precision
        self.option = channels_last
        # False once the model rejected a channels-last input.
        self._layout_ok = channels_last is not False

    @functools.cached_property
    def _conv_kinds(self) -> tuple[bool, bool]:
        """Whether the model has 2-D convolutions, and grouped ones (walked once, when the
        layout is first decided: a call with ``channels_last=False`` never walks it)."""
        convs = [m for m in self.model.modules() if isinstance(m, nn.Conv2d)]
        return bool(convs), any(m.groups > 1 for m in convs)

    def explain_channels_last(self, x: Tensor) -> bool:
        """Whether the explained (clean) forward gets a channels-last copy of ``x``.

        Asked before camkit's hooks are attached: the first time for a model and input shape,
        the answer may be measured (:mod:`camkit.engine.accel.layout`).

        Candidates are CPU inputs to models with convolutions, from batch 2 on, and at batch
        1 for models with grouped (depthwise) convolutions (ResNet-18 at batch 1 is slower in
        channels-last, so a batch of one goes as given to models without them). Whether a
        candidate runs faster so is then measured on the model, unless ``CAMKIT_CPU_CAPS``
        pins ``channels_last``.
        """
        if not self._layout_ok or x.dim() != 4:
            return False
        if x.is_contiguous(memory_format=torch.channels_last):
            return False
        if self.option is True:
            return True
        convs, grouped = self._conv_kinds
        caps = capabilities(x.device)
        candidate = convs and caps.channels_last
        if not (candidate and x.device.type == "cpu" and (x.shape[0] > 1 or grouped)):
            return False
        if not layout.measuring() or _pins_channels_last(caps.overridden):
            return True
        return layout.channels_last_faster(self.model, x)

    def scoring(
        self,
        inputs: Tensor,
        *,
        hooked: bool = False,
        rows: int | None = None,
        row_s: float | None = None,
    ) -> ForwardPlan:
        """How to forward batches of perturbed copies of ``inputs`` (under inference mode).

        ``"fp32"``: the model as given. ``"bf16"``: its bfloat16 inference copy, or the
        model under bfloat16 autocast where it cannot be copied (warned about once where
        bfloat16 is not native). ``"auto"``: as ``"bf16"`` where bfloat16 is native; else,
        off CPU, the model as given and, on CPU, an int8 copy calibrated on ``inputs`` when
        its scores follow the model's, else a float32 inference copy (batch norms folded,
        activations fused), else the model as given.

        ``hooked``: the forwards need hooks on the model's own modules to run (e.g. to mask
        a layer's output), so the plan never calls a copy: ``"bf16"`` runs under autocast,
        ``"auto"`` without native bfloat16 runs the model as given.

        ``rows``: how many rows the caller is about to forward, and ``row_s`` the seconds
        per row it measured. ``"auto"`` without native bfloat16 then builds or checks a copy
        only where that many forwards win its cost back, and runs what is already built or
        the model as given otherwise (:mod:`camkit.engine.accel.gate`). Where ``row_s`` is
        not known yet the plan is ``provisional``: what is built already; the caller times
        its first chunk and asks again for the rest. ``rows=None`` (not known): as many as
        to make any copy worth it.
        """
        layout = inputs.dim() == 4 and self._layout_ok
        layout = layout and (
            self.option is True
            or (self._conv_kinds[0] and capabilities(inputs.device).channels_last)
        )
        precision = effective_precision(self.precision, inputs.device)
        if precision == "auto" and rows is not None and not hooked:
            planned = self._auto(inputs, rows, row_s, layout)
            if planned is not None:
                return planned
        if precision == "bf16":
            if not capabilities(inputs.device).bf16_native:
                _warn_emulated_bf16(inputs.device)
            copied = None if hooked else inference_copy(self.model, torch.bfloat16)
            if copied is not None:
                return ForwardPlan(copied, torch.bfloat16, False, layout, "bf16-copy")
            return ForwardPlan(self.model, inputs.dtype, True, layout, "bf16-autocast")
        if hooked or precision == "fp32" or inputs.dtype != torch.float32:
            return ForwardPlan(self.model, inputs.dtype, False, layout)
        if inputs.device.type != "cpu":  # the float32 and int8 copies are faster on CPUs only
            return ForwardPlan(self.model, inputs.dtype, False, layout)
        quantized = int8_copy(self.model, inputs) if capabilities("cpu").int8 else None
        if quantized is not None:
            return ForwardPlan(quantized, inputs.dtype, False, layout, "int8-copy")
        copied = inference_copy(self.model, torch.float32)
        if copied is not None:
            return ForwardPlan(copied, inputs.dtype, False, layout, "fp32-copy")
        return ForwardPlan(self.model, inputs.dtype, False, layout)

    def _auto(
        self, inputs: Tensor, rows: int, row_s: float | None, layout: bool
    ) -> ForwardPlan | None:
        """``"auto"``'s plan for ``rows`` forwards on a CPU without native bfloat16, gated on
        their cost (:mod:`camkit.engine.accel.gate`); None: ungated."""
        if inputs.dtype != torch.float32 or inputs.device.type != "cpu":
            return None  # elsewhere the forwards' times are not measured here: ungated
        choice, provisional = auto_choice(self.model, inputs, rows, row_s, layout=layout)
        if choice == "int8-copy":
            quantized = int8_copy(self.model, inputs)
            if quantized is not None:
                return ForwardPlan(quantized, inputs.dtype, False, layout, "int8-copy")
            choice = "fp32-copy"  # the calibration built it as its reference
        if choice == "fp32-copy":
            copied = inference_copy(self.model, torch.float32)
            if copied is not None:
                return ForwardPlan(
                    copied, inputs.dtype, False, layout, "fp32-copy", provisional=provisional
                )
        return ForwardPlan(self.model, inputs.dtype, False, layout, provisional=provisional)

    def rejected_channels_last(self) -> None:
        """Remember that the model failed on a channels-last input: run it as given."""
        self._layout_ok = False


def _pins_channels_last(override: str) -> bool:
    """Whether a ``CAMKIT_CPU_CAPS`` value decides ``channels_last`` (names it, or is a full
    list): then its word stands, unmeasured."""
    items = [item.strip() for item in override.split(",") if item.strip()]
    return any(item.lstrip("+-") == "channels_last" or item[0] not in "+-" for item in items)


def accelerator(
    model: nn.Module, *, precision: str = "fp32", channels_last: bool | None = None
) -> Accelerator:
    """The :class:`Accelerator` for ``model`` under the given run options.

    Example:
        >>> from torch import nn
        >>> accelerator(nn.Linear(2, 2).eval(), precision="auto").precision
        'auto'
    """
    return Accelerator(model, precision=precision, channels_last=channels_last)


def effective_precision(precision: str, device: torch.device) -> str:
    """The precision a request resolves to on ``device``: ``"auto"`` becomes ``"bf16"``
    where bfloat16 is native and stays ``"auto"`` (int8 or float32 copies) elsewhere.

    Example:
        >>> import torch
        >>> effective_precision("fp32", torch.device("cpu"))
        'fp32'
    """
    if precision == "auto" and capabilities(device).bf16_native:
        return "bf16"
    return precision


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_emulated_bf16(device: torch.device) -> None:
    """Warn, once per process and device type, that bfloat16 is emulated here."""
    with _warned_lock:
        if device.type in _warned:
            return
        _warned.add(device.type)
    caps = capabilities(device)
    if device.type == "cpu":
        lacks = (
            "this CPU has no native bfloat16 instructions (AMX, AVX512-BF16, AVX-NE-CONVERT "
            f"or ARM BF16; torch uses {caps.isa})"
        )
    else:
        lacks = f"this GPU ({caps.isa}) has no bfloat16 tensor cores (compute capability 8.0+)"
    warnings.warn(
        f'precision="bf16": {lacks}, so bfloat16 is emulated and typically several times '
        'slower than float32. Use precision="auto" (the fastest mode that keeps maps close '
        'to exact on this hardware) or "fp32".',
        PerformanceWarning,
        stacklevel=4,
    )
