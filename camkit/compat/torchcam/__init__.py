"""torchcam 0.5.0's public API, computed by camkit: change ``torchcam`` to
``camkit.compat.torchcam`` in the import line.

Example:
    >>> from camkit.compat.torchcam.methods import GradCAM
    >>> from camkit.compat.torchcam.utils import overlay_mask
    >>> from torchvision.transforms.functional import to_pil_image
    >>> with GradCAM(model, "layer4") as cam_extractor:
    ...     out = model(input_tensor)
    ...     activation_map = cam_extractor(out.squeeze(0).argmax().item(), out)
    >>> activation_map[0].shape
    torch.Size([1, 2, 2])
    >>> heatmap = to_pil_image(activation_map[0].squeeze(0), mode="F")
    >>> overlay_mask(to_pil_image(input_tensor[0]), heatmap, alpha=0.5).size
    (64, 64)
"""

from camkit.compat.torchcam import explain, methods, metrics, utils
from camkit.compat.torchcam.methods.core import fuse_cams

__all__ = ["explain", "fuse_cams", "methods", "metrics", "utils"]
