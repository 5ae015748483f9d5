"""The public face of camkit: create extractors, list and describe methods, fuse maps.

Listing and describing methods imports no torch (``camkit methods`` answers at once); the
engine is imported by the first :func:`create`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from camkit.errors import ConfigError
from camkit.method import MethodConfig
from camkit.registry import ExplainerInfo, MethodInfo, PluginInfo, registry

if TYPE_CHECKING:
    from torch import nn

    from camkit.engine import Extractor
    from camkit.engine.layers import LayerSpec
    from camkit.engine.outputs import Layout


def list_methods(pattern: str | None = None) -> list[str]:
    """Names of the registered methods, sorted, optionally filtered by an fnmatch pattern."""
    return registry.names(pattern)


def method_info(name: str) -> MethodInfo:
    """Describe a method: summary, paper, config schema, gradients, providing distribution."""
    return registry.info(name)


def list_explainers(pattern: str | None = None) -> list[str]:
    """Names of the registered explainers (non-CAM methods with result types of their own,
    :class:`camkit.ExplainerSpec`), sorted, optionally filtered by an fnmatch pattern."""
    return registry.explainer_names(pattern)


def explainer_info(name: str) -> ExplainerInfo:
    """Describe an explainer: summary, paper, what to import and call, what it returns.

    Example:
        >>> camkit.explainer_info("dff").spec.import_path()  # with camkit-contrib
        'from camkit_contrib.dff import DeepFeatureFactorization'
    """
    return registry.explainer(name)


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
    from camkit.engine.options import describe, validated

    info = registry.info(name)
    try:
        return validated(info.config, config)
    except ValidationError as exc:
        raise ConfigError(f"invalid config for method {info.name!r}: {describe(exc)}") from None


def create(
    name: str,
    model: nn.Module,
    layer: LayerSpec = None,
    *,
    input_shape: Sequence[int] | None = None,
    layout: Layout = "auto",
    grid: tuple[int, int] | None = None,
    **options: Any,
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
        **options: run options (:class:`camkit.RunOptions`: ``batch_size``, ``precision``,
            ``channels_last``, ``progress``) and the method's configuration (validated by its
            ``Config``), split by name; a key neither declares is a :class:`ConfigError`.

    Example:
        >>> cam = camkit.create("scorecam", model, "layer4", batch_size=64, precision="bf16")
        >>> res = cam(images)
    """
    from camkit.engine import Extractor
    from camkit.engine.options import run_options, split_options

    info = registry.info(name)
    run, config = split_options(options, info.config.model_fields, info.name)
    method = info.cls(make_config(info.name, **config))
    return Extractor(
        method,
        model,
        layer,
        options=run_options(**run),
        input_shape=input_shape,
        layout=layout,
        grid=grid,
    )
