"""pytorch-grad-cam 1.5.7's ``pytorch_grad_cam.utils``."""

from camkit.compat.pytorch_grad_cam.utils import image, model_targets, reshape_transforms

__all__ = ["image", "model_targets", "reshape_transforms"]
