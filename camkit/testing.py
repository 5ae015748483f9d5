"""Helpers for testing CAM methods, for camkit's own tests and for plugin authors.

>>> from camkit.testing import check_method, tiny_model
>>> result = check_method("gradcam")                # tiny model, batch of 2, every check
>>> result = check_method(MyCAM, top_k=4)           # a class works before it is installed

:func:`check_method` runs a method the way users will and asserts what camkit promises for
every method: output shapes, dtypes and ranges, finite values, no hooks left on the model,
the model's parameters, buffers, flags and ``.grad`` untouched, and per-image results that do
not depend on the other images of the batch. Failures raise :class:`AssertionError` with a
message saying what was expected and what was found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from camkit import (
    CAMResult,
    Extractor,
    LayerSpec,
    Method,
    create,
    hookimpl,
    method_info,
    register_plugin,
    unregister_plugin,
)
from camkit.errors import CamkitError
from camkit.targets import Targets

__all__ = ["TinyCNN", "check_method", "no_hooks_left", "tiny_inputs", "tiny_model"]

#: The per-module hook dictionaries of ``nn.Module`` that can hold user or library hooks.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


class TinyCNN(nn.Module):
    """A small CNN with global average pooling and a linear head: ``features`` -> pool -> ``fc``.

    ``features`` outputs ``(B, channels, H / 2, W / 2)``; it is the natural target layer (and
    the one CAM's classifier weights belong to).
    """

    def __init__(self, num_classes: int = 5, channels: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def tiny_model(
    seed: int = 0, *, num_classes: int = 5, channels: int = 8, in_channels: int = 3
) -> TinyCNN:
    """A :class:`TinyCNN` in eval mode whose weights depend only on ``seed``.

    The global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(num_classes, channels, in_channels)
    return model.eval()


def tiny_inputs(batch: int = 2, size: int = 16, *, channels: int = 3, seed: int = 0) -> Tensor:
    """``(batch, channels, size, size)`` standard-normal images that depend only on ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen)


def no_hooks_left(model: nn.Module, allowed: dict[str, int] | None = None) -> None:
    """Assert that no module of ``model`` holds a hook.

    Args:
        model: the model to inspect.
        allowed: ``{"<module name>.<hook dict>": count}`` hooks that were there before (as
            returned by a first call's snapshot, see :func:`check_method`); only hooks beyond
            these count as left behind.

    Raises:
        AssertionError: naming each module and the kind of hook left on it.
    """
    allowed = allowed or {}
    left = {
        where: count
        for where, count in _hook_counts(model).items()
        if count > allowed.get(where, 0)
    }
    if left:
        listed = ", ".join(f"{where} ({count})" for where, count in sorted(left.items()))
        raise AssertionError(f"hooks left on the model: {listed}")


def check_method(
    method: str | type[Method],
    model: nn.Module | None = None,
    layer: LayerSpec = None,
    *,
    inputs: Tensor | None = None,
    targets: Targets = None,
    batch_consistent: bool = True,
    atol: float = 1e-4,
    **config: Any,
) -> CAMResult:
    """Run a method on a batch of 2 and assert the properties camkit promises.

    Args:
        method: a registered method name, or a :class:`camkit.Method` subclass (it need not
            be installed or registered).
        model: the model to explain; by default :func:`tiny_model`.
        layer: the target layer(s); by default ``"features"`` of the default model, else the
            located last spatial layer.
        inputs: ``(2, C, H, W)`` images; by default :func:`tiny_inputs`.
        targets: passed to the extractor.
        batch_consistent: also check that each image's map is the same when the image is
            explained alone (turn off for methods whose randomness depends on the batch, or
            for callable targets that depend on the image's position in the batch).
        atol: tolerance of the batch-consistency comparison.
        **config: the method's configuration.

    Returns:
        The :class:`camkit.CAMResult` of the batch, for further assertions.

    Raises:
        AssertionError: when a check fails.
    """
    if model is None:
        model = tiny_model()
        layer = "features" if layer is None else layer
    inputs = tiny_inputs() if inputs is None else inputs
    if inputs.shape[0] != 2:
        raise ValueError(f"check_method() runs on a batch of 2 images, got {tuple(inputs.shape)}")
    extractor = _extractor(method, model, layer, config)
    before = _State.of(model)

    result = extractor(inputs, targets)

    after = _State.of(model)
    no_hooks_left(model, before.hooks)
    before.assert_same(after)
    _check_result(result, extractor, inputs)
    if batch_consistent:
        for i in range(inputs.shape[0]):
            alone = extractor(inputs[i : i + 1], _one_target(targets, i))
            _assert_close(
                alone.maps[0], result.maps[i], atol, f"image {i}'s map alone vs in a batch of 2"
            )
    return result


# -- internals --------------------------------------------------------------------------


def _extractor(
    method: str | type[Method], model: nn.Module, layer: LayerSpec, config: dict[str, Any]
) -> Extractor:
    if isinstance(method, str):
        return create(method, model, layer, progress=False, **config)
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(
            f"check_method() needs a method name or a camkit.Method subclass, got {method!r}"
        )
    if _registered_class(method.name) is method:
        return create(method.name, model, layer, progress=False, **config)
    # Register the class for the time of create(), so that it meets the registry's rules
    # (name, Config, weights() or map()) and its config is validated as users will see it.
    plugin_name = f"camkit.testing:{method.__module__}.{method.__qualname__}"
    register_plugin(_OneMethod(method), plugin_name)
    try:
        return create(method.name, model, layer, progress=False, **config)
    finally:
        unregister_plugin(plugin_name)


def _registered_class(name: str) -> type[Method] | None:
    try:
        return method_info(name).cls
    except CamkitError:
        return None


class _OneMethod:
    """A plugin object providing one method class."""

    def __init__(self, cls: type[Method]) -> None:
        self.cls = cls

    @hookimpl
    def camkit_methods(self) -> list[type[Method]]:
        return [self.cls]


def _hook_counts(model: nn.Module) -> dict[str, int]:
    counts = {}
    for name, module in model.named_modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if hooks:
                counts[f"{name or '(model)'}.{attr}"] = len(hooks)
    return counts


@dataclass
class _State:
    """Everything about a model that explaining it must leave as it was."""

    tensors: dict[str, Tensor]
    grads: dict[str, Tensor | None]
    requires_grad: dict[str, bool]
    training: dict[str, bool]
    hooks: dict[str, int]

    @classmethod
    def of(cls, model: nn.Module) -> _State:
        return cls(
            tensors={k: v.detach().clone() for k, v in model.state_dict().items()},
            grads={
                k: None if p.grad is None else p.grad.detach().clone()
                for k, p in model.named_parameters()
            },
            requires_grad={k: p.requires_grad for k, p in model.named_parameters()},
            training={k or "(model)": m.training for k, m in model.named_modules()},
            hooks=_hook_counts(model),
        )

    def assert_same(self, after: _State) -> None:
        changed = [
            k
            for k, v in self.tensors.items()
            if k not in after.tensors or not torch.equal(v, after.tensors[k])
        ]
        if changed:
            raise AssertionError(f"the method changed the model's parameters or buffers: {changed}")
        grads = [k for k, g in self.grads.items() if not _same_grad(g, after.grads.get(k))]
        if grads:
            raise AssertionError(f"the method changed the .grad of parameters: {grads}")
        if self.requires_grad != after.requires_grad:
            flipped = [k for k, v in self.requires_grad.items() if after.requires_grad.get(k) != v]
            raise AssertionError(f"the method changed requires_grad of parameters: {flipped}")
        if self.training != after.training:
            flipped = [k for k, v in self.training.items() if after.training.get(k) != v]
            raise AssertionError(f"the method changed the training flag of modules: {flipped}")


def _same_grad(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a, b)


def _check_result(result: CAMResult, extractor: Extractor, inputs: Tensor) -> None:
    batch, size = inputs.shape[0], tuple(inputs.shape[2:])
    name = extractor.method.name or type(extractor.method).__name__
    _assert_shape(result.maps, (batch, *size), f"{name}: maps")
    if result.maps.dtype != torch.float32:
        raise AssertionError(f"{name}: maps have dtype {result.maps.dtype}, expected float32")
    _assert_finite(result.maps, f"{name}: maps")
    lo, hi = float(result.maps.min()), float(result.maps.max())
    if lo < 0 or hi > 1:
        raise AssertionError(f"{name}: maps span [{lo}, {hi}], expected values in [0, 1]")
    _assert_shape(result.targets, (batch,), f"{name}: targets")
    if result.scores.shape[0] != batch:
        raise AssertionError(f"{name}: scores of shape {tuple(result.scores.shape)}")
    if list(result.layer_maps) != (extractor.layers or []):
        raise AssertionError(
            f"{name}: layer_maps for {list(result.layer_maps)}, expected {extractor.layers}"
        )
    for layer, cam in result.layer_maps.items():
        if cam.dim() != 1 + len(size) or cam.shape[0] != batch:
            raise AssertionError(
                f"{name}: layer map of {layer!r} has shape {tuple(cam.shape)}, expected "
                f"(B={batch}, h, w)"
            )
        _assert_finite(cam, f"{name}: layer map of {layer!r}")
    expects_weights = not extractor.method.computes_map()
    if expects_weights != (list(result.weights) == list(result.layer_maps)):
        raise AssertionError(
            f"{name}: weights for layers {list(result.weights)}; a method that "
            f"{'produces weights' if expects_weights else 'computes its map'} should report "
            f"{'every layer' if expects_weights else 'none'}"
        )
    for layer, w in result.weights.items():
        if w.shape[0] != batch:
            raise AssertionError(f"{name}: weights of {layer!r} have shape {tuple(w.shape)}")
        _assert_finite(w, f"{name}: weights of {layer!r}")


def _assert_shape(t: Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise AssertionError(f"{what} have shape {tuple(t.shape)}, expected {tuple(expected)}")


def _assert_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise AssertionError(f"{what} contain NaN or Inf")


def _assert_close(a: Tensor, b: Tensor, atol: float, what: str) -> None:
    diff = float((a - b).abs().max())
    if diff > atol:
        raise AssertionError(f"{what}: differ by up to {diff:.3g} (tolerance {atol:g})")


def _one_target(targets: Targets, i: int) -> Targets:
    if targets is None or isinstance(targets, int) or callable(targets):
        return targets
    if isinstance(targets, Tensor) and targets.dim() == 0:
        return targets
    return [int(targets[i])]
