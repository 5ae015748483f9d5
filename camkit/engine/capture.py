"""Hooks that live for one call: capturing activations and their gradients.

Rules the rest of camkit relies on:

- hooks are attached on entry and removed on exit, also when the model raises;
- a hook only acts for the thread that attached it, so one model can be explained from
  several threads, and by several extractors, at once;
- the captured activation is never the tensor the rest of the model sees: later in-place
  ops (``ReLU(inplace=True)``, DenseNet's concatenations) modify a copy;
- gradients come from ``torch.autograd.grad`` on the captured activations, so parameters'
  ``.grad`` and ``requires_grad`` are never touched, frozen models work, and an outer
  ``torch.no_grad()`` or ``torch.inference_mode()`` does not matter;
- a forward that captures gradients records no autograd graph until the first target layer
  starts (a pre-hook turns recording on): the gradient at a layer depends only on the layer
  and what follows it, so the modules before it need not save anything for a backward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from camkit.engine.outputs import layer_tensor, with_layer_tensor
from camkit.errors import GradientError, LayerError


class Capture:
    """Forward hooks on target layers, recording their outputs during one forward pass."""

    def __init__(self, layers: list[tuple[str, nn.Module]], *, gradients: bool) -> None:
        self.layers = layers
        self.gradients = gradients
        self.activations: dict[str, Tensor] = {}
        self._thread = threading.get_ident()
        self._handles: list[Any] = []

    def __enter__(self) -> Capture:
        try:
            for name, module in self.layers:
                if self.gradients:
                    self._handles.append(module.register_forward_pre_hook(self._record))
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        self._grad_mode = torch.is_grad_enabled()
        if self.gradients:
            torch.set_grad_enabled(False)  # until the first target layer starts
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_grad_enabled(self._grad_mode)
        self._remove()

    def restart(self) -> None:
        """Forget a forward pass that failed part-way, before the model runs again."""
        self.activations.clear()
        if self.gradients:
            torch.set_grad_enabled(False)  # until the first target layer starts

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _record(self, _module: nn.Module, _inputs: Any) -> None:
        if threading.get_ident() == self._thread:
            torch.set_grad_enabled(True)

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            tensor = layer_tensor(output, name)
            if not self.gradients:
                # Contiguous whatever the forward's layout: methods get (B, C, h, w) as usual.
                self.activations[name] = tensor.detach().clone(
                    memory_format=torch.contiguous_format
                )
                return None
            # Without a graph up to here (frozen or detaching model), start one at this layer.
            act = tensor if tensor.requires_grad else tensor.detach().requires_grad_(True)
            self.activations[name] = act
            return with_layer_tensor(output, act.clone())

        return hook

    def take(self, outputs: Sequence[Any]) -> None:
        """Record the target layers' outputs of a forward pass the caller already ran (one per
        layer, in order; no hooks). With ``gradients``, an output off the autograd graph starts
        one at itself, as the hook does: :meth:`grad` then reports that the score does not
        depend on it."""
        for (name, _), output in zip(self.layers, outputs, strict=True):
            tensor = layer_tensor(output, name)
            if not self.gradients:
                self.activations[name] = tensor.detach()
            elif tensor.requires_grad:
                self.activations[name] = tensor
            else:
                self.activations[name] = tensor.detach().requires_grad_(True)

    def check_ran(self) -> None:
        """Every target layer ran (whether its values are finite is checked later)."""
        missing = [name for name, _ in self.layers if name not in self.activations]
        if missing:
            raise LayerError(
                f"layer {missing[0]!r} did not run during the model's forward pass; choose a "
                "layer the model uses"
            )

    def check_finite(self) -> None:
        """Every captured activation is finite."""
        for name, act in self.activations.items():
            if not bool(torch.isfinite(act.detach()).all()):
                raise LayerError(
                    f"layer {name!r} output NaN or Inf values for this input; camkit cannot "
                    "explain non-finite features (check the input's scale and the model)"
                )

    def grad(self, total: Tensor) -> dict[str, Tensor]:
        """d(total)/d(activation) for every captured layer (checked by :func:`check_gradients`)."""
        names = [name for name, _ in self.layers]
        if not total.requires_grad:
            raise GradientError(
                "the target score does not depend on the captured layers through differentiable "
                "operations (does the model detach or run under torch.no_grad() internally?); "
                "this method needs gradients"
            )
        try:
            grads = torch.autograd.grad(
                total, [self.activations[n] for n in names], allow_unused=True
            )
        except RuntimeError as exc:
            if "second time" not in str(exc):
                raise
            # Only a recorded pass (Services.recorded) can meet a graph already used.
            raise GradientError(
                "the autograd graph of the recorded forward pass was already freed by a backward "
                "pass; run the model again (or keep the graph with retain_graph=True)"
            ) from exc
        for name, grad in zip(names, grads):
            if grad is None:
                raise GradientError(
                    f"the target score does not depend on layer {name!r}; choose a layer "
                    "between the input and the scores"
                )
        return dict(zip(names, grads))


def check_gradients(gradients: dict[str, Tensor]) -> None:
    """Every gradient is finite."""
    for name, grad in gradients.items():
        if not bool(torch.isfinite(grad).all()):
            raise GradientError(
                f"the gradient of the target score at layer {name!r} has NaN or Inf "
                "values (a non-differentiable point or an overflow after this layer)"
            )


def grad_enabled() -> AbstractContextManager[None]:
    """Record autograd graphs whatever the caller's grad or inference mode."""
    if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
        return nullcontext()  # already recording (the usual case): nothing to switch
    return _recording()


@contextmanager
def _recording() -> Iterator[None]:
    with torch.inference_mode(False), torch.enable_grad():
        yield


@contextmanager
def preserved_buffers(
    model: nn.Module, modules: Sequence[nn.Module] | None = None
) -> Iterator[None]:
    """Restore buffers (BatchNorm running statistics) that train-mode forwards update.

    ``modules``: the model's modules that hold buffers, listed once by a caller that checks
    often (walking a large model's module tree costs more than a small model's forward pass).
    """
    if not any(m.training for m in (model.modules() if modules is None else modules)):
        yield
        return
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in saved:
                    buf.copy_(saved[name])
