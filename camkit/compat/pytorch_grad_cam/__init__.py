"""pytorch-grad-cam 1.5.7's public API, computed by camkit: change ``pytorch_grad_cam`` to
``camkit.compat.pytorch_grad_cam`` in the import lines.

Example:
    >>> from camkit.compat.pytorch_grad_cam import GradCAM
    >>> from camkit.compat.pytorch_grad_cam.utils.image import show_cam_on_image
    >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    >>> targets = [ClassifierOutputTarget(281)]
    >>> with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
    ...     grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
    >>> grayscale_cam.shape, grayscale_cam.dtype
    ((1, 64, 64), dtype('float32'))
    >>> visualization = show_cam_on_image(rgb_img, grayscale_cam[0, :], use_rgb=True)
    >>> visualization.shape, visualization.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from camkit.compat.pytorch_grad_cam import metrics, utils
from camkit.compat.pytorch_grad_cam.ablation_fasterrcnn import AblationLayerFasterRCNN
from camkit.compat.pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from camkit.compat.pytorch_grad_cam.base_cam import (
    FEM,
    KPCA_CAM,
    AblationCAM,
    AblationLayer,
    AblationLayerVit,
    BaseCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ScoreCAM,
    SegEigenCAM,
    XGradCAM,
)
from camkit.compat.pytorch_grad_cam.feature_factorization import (
    DeepFeatureFactorization,
    run_dff_on_image,
)
from camkit.compat.pytorch_grad_cam.finer_cam import FinerCAM, RefineCAM
from camkit.compat.pytorch_grad_cam.guided import FullGrad, GuidedBackpropReLUModel
from camkit.compat.pytorch_grad_cam.sess import SESS
from camkit.compat.pytorch_grad_cam.shapley_cam import ShapleyCAM

__all__ = [
    "FEM",
    "KPCA_CAM",
    "SESS",
    "AblationCAM",
    "AblationLayer",
    "AblationLayerFasterRCNN",
    "AblationLayerVit",
    "ActivationsAndGradients",
    "BaseCAM",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "LayerCAM",
    "RandomCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "XGradCAM",
    "metrics",
    "run_dff_on_image",
    "utils",
]
