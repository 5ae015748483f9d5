"""camkit: class activation maps for PyTorch image models.

>>> import camkit
>>> cam = camkit.create("gradcam", model, "layer4")
>>> result = cam(images)           # result.maps: (B, H, W) in [0, 1]
"""

from __future__ import annotations

__version__ = "0.1.0"

from camkit import errors, targets, tasks
from camkit.api import (
    create,
    list_methods,
    list_plugins,
    make_config,
    method_info,
    register_plugin,
    unregister_plugin,
)
from camkit.engine import CAMResult, Extractor, fuse, normalize
from camkit.method import Context, Field, Method, MethodConfig, hookimpl
from camkit.registry import MethodInfo, PluginInfo
from camkit.viz import overlay

__all__ = [
    "CAMResult",
    "Context",
    "Extractor",
    "Field",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "PluginInfo",
    "__version__",
    "create",
    "errors",
    "fuse",
    "hookimpl",
    "list_methods",
    "list_plugins",
    "make_config",
    "method_info",
    "normalize",
    "overlay",
    "register_plugin",
    "targets",
    "tasks",
    "unregister_plugin",
]
