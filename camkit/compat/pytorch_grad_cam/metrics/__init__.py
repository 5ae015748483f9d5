"""pytorch-grad-cam 1.5.7's ``pytorch_grad_cam.metrics``."""

from camkit.compat.pytorch_grad_cam.metrics import (
    arcc,
    cam_mult_image,
    perturbation_confidence,
    road,
)

__all__ = ["arcc", "cam_mult_image", "perturbation_confidence", "road"]
