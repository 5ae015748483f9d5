"""pytorch-grad-cam's ``FullGrad`` and ``GuidedBackpropReLUModel``, computed by camkit-contrib
(``fullgrad`` and :func:`camkit_contrib.guided_backprop`).

Differences from the originals, deliberate: the model is never changed (the original
replaces every ``nn.ReLU`` by a guided one and back by a new, not-in-place ``nn.ReLU``, leaves
the model in eval mode, sets ``requires_grad`` on the caller's input and accumulates
parameters' ``.grad``); functional ``relu`` calls in the model's forward are guided too (the
original only replaces ``nn.ReLU`` modules); ``FullGrad`` with ``eigen_smooth`` picks the sign
of the principal component that agrees with the terms (the original keeps the sign NumPy's
SVD returns, which ``legacy_numerics=True`` reproduces), and for a batch of several images
``GuidedBackpropReLUModel`` with ``target_category=None`` explains the first image's
predicted class (the original takes the arg-max over the whole batch's output).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, contrib, eval_mode, extractor
from camkit.compat.pytorch_grad_cam.base_cam import BaseCAM, projection, scale
from camkit.engine.bias_gradients import bias_layers
from camkit.engine.smoothing import principal_projection
from camkit.errors import CamkitWarning, InputError

__all__ = ["FullGrad", "GuidedBackpropReLUModel"]


def _resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(B, C, h, w)`` maps, each scaled to ``[0, 1]`` and resized (bilinear, half-pixel
    centres, no antialiasing: OpenCV's ``INTER_LINEAR``), as pytorch-grad-cam's
    ``scale_accross_batch_and_channels``."""
    scaled = scale(maps.flatten(0, 1)).view(maps.shape)
    return F.interpolate(scaled, size, mode="bilinear", align_corners=False)


def eigen_fullgrad(legacy: bool) -> camkit.Method:
    """camkit-contrib's ``fullgrad`` combined as pytorch-grad-cam's FullGrad with
    ``eigen_smooth``: its terms (each input channel's, then each layer's) scaled and resized
    to an eighth of the input, their first principal component over the terms, scaled and
    resized back. ``legacy``: NumPy's SVD and its sign, as the original."""
    base: Any = contrib("FullGrad").FullGrad

    class EigenFullGrad(base):
        def map(self, ctx: camkit.Context) -> Tensor:
            parts = torch.cat(list(self.parts(ctx)), 1)
            h, w = parts.shape[2:]
            if h < 8 or w < 8:
                raise InputError(
                    f"FullGrad's eigen_smooth works on the input at 1/8 of its size; a {h}x{w} "
                    "input is too small"
                )
            small = _resize(parts, (h // 8, w // 8))
            pc = projection(small) if legacy else principal_projection(small.double()).float()
            return _resize(pc.to(parts.device)[:, None], (h, w))[:, 0]

    return EigenFullGrad(base.Config())


class FullGrad(BaseCAM):
    """FullGrad (camkit-contrib's ``fullgrad``): the input-gradient and the bias-gradients of
    every convolution and batch norm with a bias, scaled and summed.

    ``target_layers`` is ignored, as in the original (a warning says so when not empty);
    :attr:`target_layers` lists the layers with a bias that are used. With ``eigen_smooth``
    the terms (each input channel's and each layer's map) are combined as in the original:
    scaled, resized to 1/8 of the input, projected on their first principal component,
    scaled and resized back. camkit orients that component to agree with the terms (their
    loadings sum to a non-negative value); the original keeps the sign its SVD returns, so
    its map may be the complement; ``legacy_numerics=True`` reproduces that.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import FullGrad
        >>> from camkit.compat.pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        >>> grayscale_cam = FullGrad(model, [])(input_tensor, [ClassifierOutputTarget(281)])
        >>> grayscale_cam.shape
        (1, 64, 64)
    """

    method = "fullgrad"
    smoothable = False

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module],
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        *,
        legacy_numerics: bool = False,
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
        super().__init__(model, used, reshape_transform, legacy_numerics=legacy_numerics)
        self._eigen = self._built_eigen = False  # eigen_smooth for this call / the extractor

    def _needs_activations(self, eigen_smooth: bool) -> bool:
        return False  # FullGrad reads no layer's activations

    def _camkit(self) -> camkit.Extractor:
        if self._extractor is None or self._built_eigen != self._eigen:
            # Any layer serves the clean pass; FullGrad itself reads every layer with a bias.
            layer = self.target_layers[-1:] or None
            method = eigen_fullgrad(self.legacy_numerics) if self._eigen else self.method
            self._extractor = extractor(method, self.model, layer, self._camkit_config())
            self._built_eigen = self._eigen
        return self._extractor

    def _maps(self, x: Tensor, targets: Any, eigen_smooth: bool) -> np.ndarray:
        self._eigen = eigen_smooth
        return super()._maps(x, targets, False)


class GuidedBackpropReLUModel:
    """Guided backpropagation (:func:`camkit_contrib.guided_backprop`) with the original's
    protocol: ``GuidedBackpropReLUModel(model, device)(input_img, target_category)`` returns
    the first image's input gradient as an ``(H, W, C)`` float32 array.

    Example:
        >>> from camkit.compat.pytorch_grad_cam import GuidedBackpropReLUModel
        >>> gb_model = GuidedBackpropReLUModel(model=model, device="cpu")
        >>> gb = gb_model(input_tensor, target_category=281)
        >>> gb.shape, gb.dtype
        ((64, 64, 3), dtype('float32'))
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
