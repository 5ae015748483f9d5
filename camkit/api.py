"""The public face of camkit: create extractors, list and describe methods, fuse maps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from torch import nn

from camkit.engine import Extractor
from camkit.engine.layers import LayerSpec
from camkit.engine.outputs import Layout
from camkit.errors import ConfigError
from camkit.method import MethodConfig
from camkit.registry import MethodInfo, PluginInfo, registry


def list_methods(pattern: str | None = None) -> list[str]:
    """Names of the registered methods, sorted, optionally filtered by an fnmatch pattern."""
    return registry.names(pattern)


def method_info(name: str) -> MethodInfo:
    """Describe a method: summary, paper, config schema, gradients, providing distribution."""
    return registry.info(name)


def list_plugins() -> list[PluginInfo]:
    """Every plugin camkit knows: built-ins, entry points (ok, broken or blocked), run-time."""
    return registry.plugins()


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object with ``@camkit.hookimpl`` functions without installing it."""
    registry.register(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    registry.unregister(name)


def make_config(name: str, **config: Any) -> MethodConfig:
    """Validate ``config`` against method ``name``'s schema; :class:`ConfigError` if invalid."""
    info = registry.info(name)
    try:
        return info.config(**config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(config)'}: {err['msg']}"
            + (f" (got {err['input']!r})" if err["type"] != "missing" else "")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid config for method {info.name!r}: {problems}") from None


def create(
    name: str,
    model: nn.Module,
    layer: LayerSpec = None,
    *,
    input_shape: Sequence[int] | None = None,
    layout: Layout = "auto",
    grid: tuple[int, int] | None = None,
    progress: bool | None = None,
    channels_last: bool | None = None,
    **config: Any,
) -> Extractor:
    """Create an extractor for method ``name`` on ``model``.

    Args:
        name: a method name or alias (see :func:`list_methods`).
        model: the model to explain; camkit never modifies it.
        layer: a dotted or indexed layer name, a module, a list of these (maps are fused), or
            ``None`` to use the last layer with spatial output, found on the first input (or
            on a zero input of ``input_shape`` when given).
        layout: how to read the layer's output: ``"auto"``, ``"nchw"``, ``"nhwc"`` or
            ``"tokens"``.
        grid: ``(h, w)`` of a token grid when it is not square.
        progress: show progress bars for long scoring work (``None``: when on a terminal).
        channels_last: the layout of the model's forward passes (the explained input and the
            scoring service's masked inputs): ``None`` lets camkit forward channels-last
            copies of 4-D inputs where torch's convolutions run them faster, ``False`` always
            forwards them as given (for models with operations that ignore strides),
            ``True`` always channels-last.
        **config: the method's configuration, validated by its ``Config``.
    """
    info = registry.info(name)
    method = info.cls(make_config(info.name, **config))
    return Extractor(
        method,
        model,
        layer,
        input_shape=input_shape,
        layout=layout,
        grid=grid,
        progress=progress,
        channels_last=channels_last,
    )
