"""torchcam 0.5.0's ``torchcam.methods``, computed by camkit."""

from camkit.compat.torchcam.methods.activation import CAM, ISCAM, SSCAM, ScoreCAM
from camkit.compat.torchcam.methods.core import OutputTarget
from camkit.compat.torchcam.methods.gradient import (
    GradCAM,
    GradCAMpp,
    LayerCAM,
    LeGrad,
    SmoothGradCAMpp,
    XGradCAM,
)
from camkit.compat.torchcam.methods.wrappers import FinerCAM, RefineCAM

__all__ = [
    "CAM",
    "ISCAM",
    "SSCAM",
    "FinerCAM",
    "GradCAM",
    "GradCAMpp",
    "LayerCAM",
    "LeGrad",
    "OutputTarget",
    "RefineCAM",
    "ScoreCAM",
    "SmoothGradCAMpp",
    "XGradCAM",
]
