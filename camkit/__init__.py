"""camkit: class activation maps for PyTorch image models.

>>> import camkit
>>> cam = camkit.create("gradcam", model, "layer4")
>>> result = cam(images)           # result.maps: (B, H, W) in [0, 1]

The public names are imported on first use, so ``import camkit`` (and ``camkit --version``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from camkit._version import __version__

if TYPE_CHECKING:
    from camkit import errors, targets, tasks
    from camkit.api import (
        create,
        explainer_info,
        list_explainers,
        list_methods,
        list_plugins,
        make_config,
        method_info,
        register_plugin,
        unregister_plugin,
    )
    from camkit.engine import CAMResult, Extractor, RunOptions, fuse
    from camkit.engine.layers import LayerSpec
    from camkit.explainer import explain
    from camkit.method import (
        Context,
        ExplainerSpec,
        Field,
        Method,
        MethodConfig,
        hookimpl,
        minmax_normalize,
    )
    from camkit.registry import ExplainerInfo, MethodInfo, PluginInfo
    from camkit.viz import overlay

#: Public name -> the module that defines it.
_LAZY = {
    "errors": "camkit",
    "targets": "camkit",
    "tasks": "camkit",
    "create": "camkit.api",
    "explainer_info": "camkit.api",
    "list_explainers": "camkit.api",
    "list_methods": "camkit.api",
    "list_plugins": "camkit.api",
    "make_config": "camkit.api",
    "method_info": "camkit.api",
    "register_plugin": "camkit.api",
    "unregister_plugin": "camkit.api",
    "CAMResult": "camkit.engine",
    "Extractor": "camkit.engine",
    "fuse": "camkit.engine",
    "RunOptions": "camkit.engine",
    "LayerSpec": "camkit.engine.layers",
    "explain": "camkit.explainer",
    "Context": "camkit.method",
    "ExplainerSpec": "camkit.method",
    "Field": "camkit.method",
    "Method": "camkit.method",
    "MethodConfig": "camkit.method",
    "hookimpl": "camkit.method",
    "minmax_normalize": "camkit.method",
    "ExplainerInfo": "camkit.registry",
    "MethodInfo": "camkit.registry",
    "PluginInfo": "camkit.registry",
    "overlay": "camkit.viz",
}

__all__ = [
    "CAMResult",
    "Context",
    "ExplainerInfo",
    "ExplainerSpec",
    "Extractor",
    "Field",
    "LayerSpec",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "PluginInfo",
    "RunOptions",
    "__version__",
    "create",
    "errors",
    "explain",
    "explainer_info",
    "fuse",
    "hookimpl",
    "list_explainers",
    "list_methods",
    "list_plugins",
    "make_config",
    "method_info",
    "minmax_normalize",
    "overlay",
    "register_plugin",
    "targets",
    "tasks",
    "unregister_plugin",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # Subpackages (camkit.viz, camkit.metrics, ...) load on first use like the names.
        if name.startswith("_") or importlib.util.find_spec(f"camkit.{name}") is None:
            raise AttributeError(f"module 'camkit' has no attribute {name!r}")
        module = "camkit"
    if module == "camkit":
        value: Any = importlib.import_module(f"camkit.{name}")
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
