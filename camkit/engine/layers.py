"""Resolving target layers: dotted and indexed names, modules, lists, or auto-location."""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from camkit.errors import LayerError, LayerNotFoundError, did_you_mean

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

_STEP = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


def resolve(model: nn.Module, spec: str | nn.Module) -> tuple[str, nn.Module]:
    """Resolve one layer to ``(dotted name, module)``.

    ``spec`` is a dotted name (``"layer4.1.conv2"``), an indexed name (``"layer4[-1]"``,
    ``"encoder.layers[-1].ln_1"``) or a submodule of ``model``.
    """
    if isinstance(spec, nn.Module):
        for name, candidate in model.named_modules():
            if candidate is spec:
                return name, candidate
        raise LayerNotFoundError(
            f"the module {type(spec).__name__} passed as layer is not a submodule of the model"
        )
    if not isinstance(spec, str):
        raise LayerNotFoundError(
            f"a layer is a name, a module or a list of these, not {type(spec).__name__}"
        )
    module: nn.Module = model
    path: list[str] = []
    for step in spec.split(".") if spec else []:
        match = _STEP.match(step)
        if match is None:
            raise LayerNotFoundError(f"cannot parse layer name {spec!r} at {step!r}")
        attr, indices = match.groups()
        if attr:
            child = module._modules.get(attr)
            if not isinstance(child, nn.Module):
                raise _not_found(model, spec, ".".join([*path, attr]))
            module, path = child, [*path, attr]
        for index in re.findall(r"-?\d+", indices):
            children = [(k, m) for k, m in module._modules.items() if m is not None]
            try:
                key, module = children[int(index)]
            except IndexError:
                where = ".".join(path) or "the model"
                raise LayerNotFoundError(
                    f"layer {spec!r}: {where} has {len(children)} children, so index {index} is "
                    "out of range"
                ) from None
            path.append(key)
    if module is model and spec:
        raise _not_found(model, spec, spec)
    return ".".join(path), module


def resolve_all(model: nn.Module, spec: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Resolve a layer spec that may be a list; duplicates are kept once, in order."""
    if isinstance(spec, (str, nn.Module)):
        specs: list[str | nn.Module] = [spec]
    elif isinstance(spec, Sequence):
        specs = list(spec)
    else:
        raise LayerNotFoundError(
            f"a layer is a name, a module or a list of these, not {type(spec).__name__}"
        )
    if not specs:
        raise LayerNotFoundError("an empty list of layers was given")
    resolved: dict[str, nn.Module] = {}
    for item in specs:
        name, module = resolve(model, item)
        resolved.setdefault(name, module)
    return list(resolved.items())


def locate(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """The last module whose output has spatial extent, found by running ``x`` once.

    A module's output counts when it is a tensor of the input's rank (``(B, C, h, w)`` for
    images) with more than one spatial position. Transformers whose useful layers output
    tokens need the layer named (e.g. ``"encoder.layers[-1].ln_1"``).
    """
    found: list[tuple[str, nn.Module]] = []
    # Other threads may run the model meanwhile; their forwards must not be recorded.
    thread = threading.get_ident()

    def record(name: str, module: nn.Module):
        def hook(_m: nn.Module, _i: object, out: object) -> None:
            if threading.get_ident() != thread:
                return
            if isinstance(out, Tensor) and out.dim() == x.dim() and out.shape[2:].numel() > 1:
                found.append((name, module))

        return hook

    handles = [
        m.register_forward_hook(record(n, m)) for n, m in model.named_modules() if m is not model
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise LayerError(
            "could not find a layer with spatial output to explain; pass layer=... by name"
        )
    return found[-1]


def _not_found(model: nn.Module, spec: str, failed: str) -> LayerNotFoundError:
    names = [n for n, _ in model.named_modules() if n]
    hint = did_you_mean(spec, names) or did_you_mean(failed, names)
    top = [n for n in names if "." not in n]
    return LayerNotFoundError(
        f"no layer {failed!r} in {type(model).__name__} (looking up {spec!r}).{hint} "
        f"Top-level layers: {', '.join(top[:20])}"
    )
