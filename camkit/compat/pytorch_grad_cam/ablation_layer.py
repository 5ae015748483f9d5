"""pytorch-grad-cam's ``ablation_layer`` module: the ablation layers ``AblationCAM`` takes."""

from camkit.compat.pytorch_grad_cam.ablation_fasterrcnn import AblationLayerFasterRCNN
from camkit.compat.pytorch_grad_cam.base_cam import AblationLayer, AblationLayerVit

__all__ = ["AblationLayer", "AblationLayerFasterRCNN", "AblationLayerVit"]
