"""camkit's built-in methods, registered through the same hook as any third-party plugin."""

from __future__ import annotations

from camkit.method import Method, hookimpl
from camkit.methods.activation import CAM
from camkit.methods.gradient import GradCAM, GradCAMpp, LayerCAM, SmoothGradCAMpp, XGradCAM
from camkit.methods.score import ISCAM, SSCAM, ScoreCAM

BUILTIN_METHODS: list[type[Method]] = [
    CAM,
    GradCAM,
    GradCAMpp,
    SmoothGradCAMpp,
    XGradCAM,
    LayerCAM,
    ScoreCAM,
    SSCAM,
    ISCAM,
]


@hookimpl
def camkit_methods() -> list[type[Method]]:
    return list(BUILTIN_METHODS)
