r"""The full-gradient pass (Srinivas & Fleuret, 2019): the gradient of the target score with
respect to the input, and the *bias-gradients* of every layer with a bias.

For a network :math:`f`, the full-gradient decomposition is
:math:`f(x) = \nabla_x f(x)^\top x + \sum_{l} \sum_c b_{l,c} \sum_{p} \partial f /
\partial z_{l,c}(p)` (exact for piecewise-linear networks: ReLU CNNs, batch norm in
inference, linear layers), where :math:`z_l` is the output of layer :math:`l` and :math:`b_l`
its bias. The spatial terms
:math:`b_{l,c} \, \partial f / \partial z_{l,c}(p)` are what this pass returns, per layer.

Layers with a bias, for images: ``nn.Conv2d`` with ``bias`` and ``nn.BatchNorm2d`` (and their
3-D counterparts for video) whose ``forward`` is torch's own, so that the output really is
``W * x + b`` (a subclass that adds an activation, timm's ``BatchNormAct2d``, is left out). A
batch norm's bias is its effective bias in inference, :math:`\beta - \mu \gamma /
\sqrt{\sigma^2 + \epsilon}` from its running statistics (``weight``/``bias`` taken as 1/0
when not affine; without running statistics, :math:`\beta`). A layer used twice in a forward
gives two terms. Linear layers' biases have no spatial extent and are not returned.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from camkit.engine.capture import grad_enabled
from camkit.engine.outputs import layer_tensor, with_layer_tensor
from camkit.errors import GradientError

if TYPE_CHECKING:
    from camkit.engine.services import Services

_BatchNorm = nn.modules.batchnorm._BatchNorm
_CONVS = {4: nn.Conv2d, 5: nn.Conv3d}
_NORMS = {4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def effective_bias(module: nn.Module) -> Tensor:
    """``(C,)`` the bias a conv or (inference-mode) batch norm adds to each channel."""
    if not isinstance(module, _BatchNorm):
        assert isinstance(module.bias, Tensor)
        return module.bias.detach()
    channels = module.num_features
    beta = module.bias.detach() if module.bias is not None else None
    if module.running_mean is None or module.running_var is None:
        return beta if beta is not None else torch.zeros(channels)
    gamma = module.weight.detach() if module.weight is not None else 1.0
    shift = module.running_mean * gamma / torch.sqrt(module.running_var + module.eps)
    return (beta if beta is not None else 0.0) - shift


def bias_layers(model: nn.Module, dims: int) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the model's layers with a bias, for ``dims``-D inputs."""
    conv, norm = _CONVS.get(dims), _NORMS.get(dims)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if conv is not None and isinstance(module, conv) and type(module).forward is conv.forward:
            if module.bias is not None:
                found.append((name, module))
        elif (
            norm is not None
            and isinstance(module, norm)
            and type(module).forward is _BatchNorm.forward
        ):
            found.append((name, module))
    return found


class _Outputs:
    """Forward hooks keeping each bias layer's output (the model gets a copy, so later
    in-place operations such as ``ReLU(inplace=True)`` leave the kept tensor alone)."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.kept: list[tuple[str, nn.Module, Tensor]] = []
        self._thread = threading.get_ident()
        self._handles: list[Any] = []

    def __enter__(self) -> _Outputs:
        try:
            for name, module in self.layers:
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, _inputs: Any, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            tensor = layer_tensor(output, name)
            if not tensor.requires_grad:
                return None
            self.kept.append((name, module, tensor))
            return with_layer_tensor(output, tensor.clone())

        return hook


def bias_gradients(door: Services) -> tuple[Tensor, list[tuple[str, Tensor]]]:
    """The input gradient ``(B, C_in, H, W)`` and, for each application of a layer with a
    bias (in forward order), ``(name, b * d(target)/d(output))``, ``(B, C, h, w)``."""
    x = door.inputs
    layers = bias_layers(door.model, x.dim())
    inputs: list[Tensor] = []
    terms: list[tuple[str, list[Tensor]]] = []
    for start, stop in door.chunks(x.shape[0], "full gradients"):
        chunk = x[start:stop].detach().clone().requires_grad_(True)
        index = torch.arange(start, stop, device=chunk.device)
        outputs = _Outputs(layers)
        layout = door.accel.explain_channels_last(chunk)  # before any hook (may be measured)
        with grad_enabled():
            with outputs:
                out = door.run(door.model, chunk, layout, restart=outputs.kept.clear)[0]
            total = door.chosen.score(out, index).sum()
            if not total.requires_grad:
                raise GradientError(
                    "the target score does not depend on the input through differentiable "
                    "operations (does the model detach or run under torch.no_grad()?)"
                )
            tensors = [chunk, *(t for _, _, t in outputs.kept)]
            grads = torch.autograd.grad(total, tensors, allow_unused=True)
        inputs.append(_checked(grads[0], chunk, "the input"))
        for i, ((name, module, kept), grad) in enumerate(zip(outputs.kept, grads[1:])):
            grad = _checked(grad, kept, f"layer {name!r}")
            bias = effective_bias(module).to(grad.device, grad.dtype)
            term = grad * bias.view(1, -1, *(1,) * (grad.dim() - 2))
            if i == len(terms):
                terms.append((name, [term]))
            else:
                terms[i][1].append(term)
    return torch.cat(inputs), [(name, torch.cat(parts)) for name, parts in terms]


def _checked(grad: Tensor | None, like: Tensor, where: str) -> Tensor:
    if grad is None:  # the target does not depend on it: a zero gradient
        return torch.zeros_like(like, memory_format=torch.contiguous_format)
    if not bool(torch.isfinite(grad).all()):
        raise GradientError(f"the gradient of the target score at {where} has NaN or Inf values")
    return grad.detach().contiguous()
