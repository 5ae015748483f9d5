"""torchcam 0.5.0's public API, computed by camkit: change ``torchcam`` to
``camkit.compat.torchcam`` in the import line.

Example:
    >>> from camkit.compat.torchcam.methods import GradCAM
    >>> with GradCAM(model, "layer4") as cam_extractor:
    ...     scores = model(input_tensor)
    ...     cams = cam_extractor(class_idx=100, scores=scores)
"""

from camkit.compat.torchcam import explain, methods, metrics, utils
from camkit.compat.torchcam.methods.core import fuse_cams

__all__ = ["explain", "fuse_cams", "methods", "metrics", "utils"]
