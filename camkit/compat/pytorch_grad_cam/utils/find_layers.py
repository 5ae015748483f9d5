"""pytorch-grad-cam's ``utils.find_layers``: find or replace a model's submodules, depth
first in registration order."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

__all__ = [
    "find_layer_predicate_recursive",
    "find_layer_types_recursive",
    "replace_all_layer_type_recursive",
    "replace_layer_recursive",
]


def replace_layer_recursive(model: nn.Module, old_layer: nn.Module, new_layer: nn.Module) -> bool:
    """Put ``new_layer`` in place of the first submodule equal to ``old_layer``; ``True`` if
    one was found.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.find_layers import replace_layer_recursive
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
        >>> replace_layer_recursive(net, net[1][0], nn.Tanh()), net[1][0]
        (True, Tanh())
    """
    for name, layer in model._modules.items():
        if layer is None:
            continue
        if layer == old_layer:
            model._modules[name] = new_layer
            return True
        if replace_layer_recursive(layer, old_layer, new_layer):
            return True
    return False


def replace_all_layer_type_recursive(
    model: nn.Module, old_layer_type: type | tuple[type, ...], new_layer: nn.Module
) -> None:
    """Put ``new_layer`` (the same instance) in place of every submodule of
    ``old_layer_type``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.find_layers import (
        ...     replace_all_layer_type_recursive,
        ... )
        >>> net = nn.Sequential(nn.ReLU(), nn.Sequential(nn.ReLU()))
        >>> replace_all_layer_type_recursive(net, nn.ReLU, nn.Identity())
        >>> net
        Sequential(
          (0): Identity()
          (1): Sequential(
            (0): Identity()
          )
        )
    """
    for name, layer in model._modules.items():
        if layer is None:
            continue
        if isinstance(layer, old_layer_type):
            model._modules[name] = new_layer
        replace_all_layer_type_recursive(layer, old_layer_type, new_layer)


def find_layer_types_recursive(model: nn.Module, layer_types: Iterable[type]) -> list[nn.Module]:
    """Every submodule whose type is exactly one of ``layer_types``.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.find_layers import (
        ...     find_layer_types_recursive,
        ... )
        >>> len(find_layer_types_recursive(model, [nn.Conv2d]))
        20
    """
    types = tuple(layer_types)
    return find_layer_predicate_recursive(model, lambda layer: type(layer) in types)


def find_layer_predicate_recursive(
    model: nn.Module, predicate: Callable[[nn.Module], bool]
) -> list[nn.Module]:
    """Every submodule for which ``predicate`` is true, parents before their children.

    Example:
        >>> from camkit.compat.pytorch_grad_cam.utils.find_layers import (
        ...     find_layer_predicate_recursive,
        ... )
        >>> find_layer_predicate_recursive(nn.Sequential(nn.ReLU(), nn.Tanh()), callable)
        [ReLU(), Tanh()]
    """
    found = []
    for layer in model._modules.values():
        if layer is None:
            continue
        if predicate(layer):
            found.append(layer)
        found.extend(find_layer_predicate_recursive(layer, predicate))
    return found
