"""pytorch-grad-cam 1.5.7's ``pytorch_grad_cam.metrics``."""

from camkit.compat.pytorch_grad_cam.metrics import cam_mult_image, road

__all__ = ["cam_mult_image", "road"]
