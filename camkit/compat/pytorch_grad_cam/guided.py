"""pytorch-grad-cam's ``FullGrad`` and ``GuidedBackpropReLUModel``, computed by camkit-contrib
(``fullgrad`` and :func:`camkit_contrib.guided_backprop`).

Differences from the originals, deliberate: the model is never changed (the original
replaces every ``nn.ReLU`` by a guided one and back by a new, not-in-place ``nn.ReLU``, leaves
the model in eval mode, sets ``requires_grad`` on the caller's input and accumulates
parameters' ``.grad``); functional ``relu`` calls in the model's forward are guided too (the
original only replaces ``nn.ReLU`` modules); ``FullGrad`` does not implement ``eigen_smooth``
(a :class:`~camkit.errors.ConfigError`), and for a batch of several images
``GuidedBackpropReLUModel`` with ``target_category=None`` explains the first image's
predicted class (the original takes the arg-max over the whole batch's output).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, contrib, eval_mode, extractor
from camkit.compat.pytorch_grad_cam.base_cam import BaseCAM, Target
from camkit.engine.bias_gradients import bias_layers
from camkit.errors import CamkitWarning, ConfigError

__all__ = ["FullGrad", "GuidedBackpropReLUModel"]


class FullGrad(BaseCAM):
    """FullGrad (camkit-contrib's ``fullgrad``): the input-gradient and the bias-gradients of
    every convolution and batch norm with a bias, scaled and summed.

    ``target_layers`` is ignored, as in the original (a warning says so when not empty);
    :attr:`target_layers` lists the layers with a bias that are used.

    Example:
        >>> grayscale_cam = FullGrad(model, [])(x, [ClassifierOutputTarget(281)])
    """

    method = "fullgrad"
    smoothable = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not isinstance(target_layers, (list, tuple)):
            raise CompatTypeError(f"target_layers must be a list, got {target_layers!r}")
        if len(target_layers) > 0:
            warnings.warn(
                "target_layers is ignored by FullGrad: every layer with a bias is used",
                CamkitWarning,
                stacklevel=2,
            )
        used = [module for _, module in bias_layers(model, 4)]
        super().__init__(model, used, reshape_transform)

    def _camkit(self) -> camkit.Extractor:
        if self._extractor is None:
            # Any layer serves the clean pass; FullGrad itself reads every layer with a bias.
            layer = self.target_layers[-1:] or None
            self._extractor = extractor(self.method, self.model, layer, self._camkit_config())
        return self._extractor

    def __call__(
        self,
        input_tensor: Tensor,
        targets: Sequence[Target] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """``(B, H, W)`` float32 maps in ``[0, 1]`` (``aug_smooth`` as for every shim)."""
        if eigen_smooth:
            raise ConfigError("camkit's FullGrad shim does not implement eigen_smooth")
        return super().__call__(input_tensor, targets, aug_smooth, False)


class GuidedBackpropReLUModel:
    """Guided backpropagation (:func:`camkit_contrib.guided_backprop`) with the original's
    protocol: ``GuidedBackpropReLUModel(model, device)(input_img, target_category)`` returns
    the first image's input gradient as an ``(H, W, C)`` float32 array.

    Example:
        >>> gb = GuidedBackpropReLUModel(model=model, device="cpu")(x, target_category=281)
    """

    def __init__(self, model: nn.Module, device: str | torch.device | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise CompatTypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        if device is None:
            param = next(model.parameters(), None)
            self.device = param.device if param is not None else torch.device("cpu")
        else:
            self.device = torch.device(device)
            self.model = self.model.to(self.device)

    def forward(self, input_img: Tensor) -> Any:
        """The model's output for ``input_img``."""
        return self.model(input_img)

    def __call__(self, input_img: Tensor, target_category: int | None = None) -> np.ndarray:
        """``(H, W, C)`` guided gradient of the first image for ``target_category`` (default:
        its predicted class), with the model in eval mode for the call."""
        guided_backprop = contrib("GuidedBackpropReLUModel").guided_backprop
        x = input_img.detach().to(self.device)[:1]
        targets = None if target_category is None else [int(target_category)]
        with eval_mode(self.model):
            grad = guided_backprop(self.model, x, targets)
        return grad[0].float().cpu().numpy().transpose(1, 2, 0)
