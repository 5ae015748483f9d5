"""camkit: class activation maps for PyTorch image models.

>>> import camkit
>>> cam = camkit.create("gradcam", model, "layer4")
>>> result = cam(images)           # result.maps: (B, H, W) in [0, 1]
"""

from __future__ import annotations

from camkit import errors, targets
from camkit._version import __version__
from camkit.api import (
    create,
    list_methods,
    list_plugins,
    make_config,
    method_info,
    register_plugin,
    unregister_plugin,
)
from camkit.engine import CAMResult, Extractor, RunOptions, fuse
from camkit.engine.layers import LayerSpec
from camkit.method import Context, Field, Method, MethodConfig, hookimpl, minmax_normalize
from camkit.registry import MethodInfo, PluginInfo
from camkit.viz import overlay

__all__ = [
    "CAMResult",
    "Context",
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
    "fuse",
    "hookimpl",
    "list_methods",
    "list_plugins",
    "make_config",
    "method_info",
    "minmax_normalize",
    "overlay",
    "register_plugin",
    "targets",
    "unregister_plugin",
]
