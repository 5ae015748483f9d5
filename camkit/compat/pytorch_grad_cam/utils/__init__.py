"""pytorch-grad-cam 1.5.7's ``pytorch_grad_cam.utils``."""

from camkit.compat.pytorch_grad_cam.utils import (
    find_layers,
    image,
    model_targets,
    reshape_transforms,
    svd_on_activations,
)
from camkit.compat.pytorch_grad_cam.utils.image import deprocess_image
from camkit.compat.pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

__all__ = [
    "deprocess_image",
    "find_layers",
    "get_2d_projection",
    "image",
    "model_targets",
    "reshape_transforms",
    "svd_on_activations",
]
