"""pytorch-grad-cam 1.5.7's ``ActivationsAndGradients``: the hook helper its CAMs record with.

A user builds it on a model and target layers, runs the model through it, back-propagates
whatever score they like, and reads ``activations`` (in the order the layers ran) and
``gradients`` (the same order: each gradient is put in front as the backward pass reaches
its layer). The hooks stay on the layers until :meth:`ActivationsAndGradients.release`, as
in the original; unlike the original they hold the helper only weakly, so a helper that is
dropped without ``release()`` takes its hooks with it, and it is a context manager that
releases on exit.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from camkit.compat._shared import CompatTypeError
from camkit.errors import LayerError

__all__ = ["ActivationsAndGradients"]


def _remove(handles: list[RemovableHandle]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class ActivationsAndGradients:
    """Records the outputs of ``target_layers`` and, after a backward pass, their gradients.

    Args:
        model: the model; calling the helper calls it.
        target_layers: modules of ``model``.
        reshape_transform: applied to each recorded activation and gradient (e.g.
            ``vit_reshape_transform``), or ``None``.
        detach: store detached CPU copies (default); with ``False`` the tensors themselves,
            attached to the graph, and ``reshape_transform`` is not applied (as the original).

    Attributes:
        activations: one tensor per target-layer run of the last call, in the order the
            layers ran.
        gradients: one tensor per target-layer output the last backward pass reached, in the
            same order as ``activations`` (outputs that do not require gradients get none).
        handles: the forward hooks on the layers (one per layer; the original keeps two).

    Example:
        >>> with ActivationsAndGradients(model, [model.layer4[-1]], None) as record:
        ...     record(x)[:, 281].sum().backward()
        ...     acts, grads = record.activations[0], record.gradients[0]
    """

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Any], Tensor] | None,
        detach: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise CompatTypeError(f"model must be a torch module, got {type(model).__name__}")
        if not isinstance(target_layers, (list, tuple)) or not all(
            isinstance(m, nn.Module) for m in target_layers
        ):
            raise CompatTypeError(
                f"target_layers must be a list of modules of the model, got {target_layers!r}"
            )
        if reshape_transform is not None and not callable(reshape_transform):
            raise CompatTypeError("reshape_transform must be callable")
        self.model = model
        self.reshape_transform = reshape_transform
        self.detach = detach
        self.activations: list[Any] = []
        self.gradients: list[Any] = []
        self.handles: list[RemovableHandle] = []
        hook = _weak_hook(weakref.ref(self))
        try:
            for layer in target_layers:
                self.handles.append(layer.register_forward_hook(hook))
        except BaseException:
            _remove(self.handles)
            raise
        # Hooks go with the helper when it is dropped without release().
        self._finalizer = weakref.finalize(self, _remove, self.handles)

    # -- recording ------------------------------------------------------------------------

    def _shown(self, t: Any) -> Any:
        if not self.detach:
            return t
        if self.reshape_transform is not None:
            t = self.reshape_transform(t)
        if not isinstance(t, Tensor):
            raise LayerError(
                f"a target layer returned {type(t).__name__}, not a tensor; pass a "
                "reshape_transform that turns it into one"
            )
        return t.cpu().detach()

    def save_activation(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Record ``output`` (the forward hook's first half)."""
        self.activations.append(self._shown(output))

    def save_gradient(self, module: nn.Module, inputs: Any, output: Any) -> None:
        """Have ``output``'s gradient recorded when a backward pass reaches it."""
        if not isinstance(output, Tensor) or not output.requires_grad:
            return  # nothing to attach a gradient hook to (as the original)
        ref = weakref.ref(self)

        def store(grad: Tensor) -> None:
            record = ref()
            if record is not None:  # backward pass after the helper was dropped: ignore
                record.gradients = [record._shown(grad), *record.gradients]

        output.register_hook(store)

    # -- the protocol ---------------------------------------------------------------------

    def __call__(self, x: Any) -> Any:
        """Run the model on ``x`` with fresh ``activations`` and ``gradients`` lists."""
        self.gradients = []
        self.activations = []
        return self.model(x)

    def clear(self) -> None:
        """Detach (in place) and forget the recorded tensors."""
        for t in [*self.activations, *self.gradients]:
            if isinstance(t, Tensor):
                t.detach_()
        self.activations.clear()
        self.gradients.clear()

    def release(self) -> None:
        """Forget the recorded tensors and remove the hooks (idempotent)."""
        self.clear()
        self._finalizer()

    def __enter__(self) -> ActivationsAndGradients:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _weak_hook(ref: weakref.ReferenceType[ActivationsAndGradients]) -> Callable[..., None]:
    """The forward hook, holding the helper only weakly (so the layers do not keep it)."""

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        record = ref()
        if record is not None:
            record.save_activation(module, inputs, output)
            record.save_gradient(module, inputs, output)

    return hook
