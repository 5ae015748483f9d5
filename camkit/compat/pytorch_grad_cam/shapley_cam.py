"""pytorch-grad-cam's ``ShapleyCAM``, computed by camkit-contrib's ``shapleycam``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

from camkit.compat.pytorch_grad_cam.base_cam import BaseCAM


class ShapleyCAM(BaseCAM):
    r"""ShapleyCAM (camkit-contrib's ``shapleycam``): channels weighted by the spatial mean of
    :math:`g - \frac{1}{2} H A` (the gradient and the Hessian-vector product at the layer).

    camkit computes :math:`H A` in its own pass (one extra forward and a double backward), so
    the input needs no gradient and the model's parameters' ``.grad`` are never touched; the
    original differentiates with respect to the input with ``create_graph=True``. Unlike the
    original (which weights untransformed token activations and fails there), token layers
    of ViTs work: camkit reads them itself.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import ShapleyCAM
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> targets = [ClassifierOutputTarget(281)]
        >>> with ShapleyCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        ...     grayscale_cam = cam(input_tensor=input_tensor, targets=targets)
        >>> grayscale_cam.shape
        (1, 64, 64)
    """

    method = "shapleycam"

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__(model, target_layers, reshape_transform)
