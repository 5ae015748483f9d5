"""torchcam's gradient-based extractors, computed by camkit.

Every extractor here but Smooth Grad-CAM++ computes its maps from the forward pass the user
ran: camkit differentiates the user's scores with respect to the recorded layer outputs (one
backward pass, as torchcam). Without that graph (scores computed under ``no_grad``, a second
call on the same scores, ``retain_graph=True``) camkit runs the recorded input afresh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import camkit
from camkit.compat._shared import EpsilonXGradCAM, seed_from_global_rng
from camkit.compat.torchcam.methods.core import _CAM, LayerArg
from camkit.errors import ConfigError, LayerError

__all__ = [
    "GradCAM",
    "GradCAMpp",
    "LayerCAM",
    "LeGrad",
    "SmoothGradCAMpp",
    "XGradCAM",
]


class _GradCAM(_CAM):
    _replays = True
    _needs_gradients = True
    _score_used = True


class GradCAM(_GradCAM):
    r"""Grad-CAM (camkit's ``gradcam``): channels weighted by their averaged gradient.

    .. math:: w_k^{(c)} = \frac{1}{H W} \sum_{i,j} \frac{\partial Y^{(c)}}{\partial A_k(i, j)}

    Example:
        >>> with GradCAM(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
    """

    _method = "gradcam"


class GradCAMpp(_GradCAM):
    r"""Grad-CAM++ (camkit's ``gradcampp``) with the paper's pixel coefficients.

    .. math::

        w_k^{(c)} = \sum_{i,j} \alpha_k^{(c)}(i, j)\, ReLU(g_k(i, j)), \qquad
        \alpha_k^{(c)}(i, j) = \frac{g_k(i, j)^2}{2 g_k(i, j)^2 + \sum_{a,b} A_k(a, b) g_k(i, j)^3}

    torchcam 0.5.0 divides a copy of :math:`g^2` by the denominator and discards it, so its
    weights are :math:`\sum_{i,j} g^2 ReLU(g)`; ``legacy_numerics=True`` reproduces that.

    Example:
        >>> with GradCAMpp(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)

    Args:
        model: input model
        target_layer: the target layer(s) or their names
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
        legacy_numerics: reproduce torchcam 0.5.0's weights
    """

    _method = "gradcampp"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        input_shape: tuple[int, ...] = (3, 224, 224),
        legacy_numerics: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, input_shape, **kwargs)
        self.legacy_numerics = legacy_numerics
        if legacy_numerics:
            self._method = "layercam"  # its pixel weights are ReLU(g)

    def _maps(self, result: camkit.CAMResult) -> list[Tensor]:
        if not self.legacy_numerics:
            return super()._maps(result)
        maps = []
        for relu_g, fmap in zip(result.weights.values(), self.hook_a):
            assert fmap is not None
            weights = relu_g.pow(3).flatten(2).sum(-1)  # g^2 ReLU(g) = ReLU(g)^3
            w = weights.to(fmap.dtype)[(...,) + (None,) * (fmap.ndim - 2)]
            maps.append(torch.relu(torch.nansum(w * fmap, dim=1)))
        return maps


class SmoothGradCAMpp(_CAM):
    r"""Smooth Grad-CAM++ (camkit's ``smoothgradcampp``): Grad-CAM++ with the gradient's
    powers averaged over noisy copies of the recorded input.

    camkit uses the averaged first-order gradient and the clean activations; torchcam 0.5.0
    multiplies by the last noisy copy's gradient and maps its activations (see
    docs/migrating.md). The noise is seeded from torch's global generator.

    Example:
        >>> with SmoothGradCAMpp(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)

    Args:
        model: input model
        target_layer: the target layer(s) or their names
        num_samples: noisy copies of the input
        std: standard deviation of the noise
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
    """

    _method = "smoothgradcampp"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        num_samples: int = 4,
        std: float = 0.3,
        input_shape: tuple[int, ...] = (3, 224, 224),
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, input_shape, **kwargs)
        self.num_samples = num_samples
        self.std = std

    def _run_model(self, targets: Any) -> camkit.CAMResult:
        self._extractor = None  # a fresh seed for every call
        return super()._run_model(targets)

    def _camkit_config(self, replay_prefix: str = "") -> dict[str, Any]:
        return {"num_samples": self.num_samples, "std": self.std, "seed": seed_from_global_rng()}

    def _extra_repr(self) -> str:
        return f"{super()._extra_repr()}, num_samples={self.num_samples}, std={self.std}"


class XGradCAM(_GradCAM):
    r"""XGrad-CAM (camkit's ``xgradcam``): gradients averaged with activation weights.

    .. math:: w_k^{(c)} = \sum_{i,j} g_k(i, j) \frac{A_k(i, j)}{\sum_{m,n} A_k(m, n)}

    torchcam adds :math:`10^{-8}` to the denominator, which divides by almost zero for
    channels summing to about :math:`-10^{-8}` (untrained models); camkit guards only exact
    zeros, and ``legacy_numerics=True`` reproduces torchcam.

    Example:
        >>> with XGradCAM(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
    """

    _method = "xgradcam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        input_shape: tuple[int, ...] = (3, 224, 224),
        legacy_numerics: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, input_shape, **kwargs)
        self.legacy_numerics = legacy_numerics

    def _camkit_method(self, config: dict[str, Any]) -> str | camkit.Method:
        if self.legacy_numerics:
            return EpsilonXGradCAM(EpsilonXGradCAM.Config(eps=1e-8))
        return self._method


class LayerCAM(_GradCAM):
    r"""Layer-CAM (camkit's ``layercam``): activations weighted by their positive gradients.

    ``fuse_cams`` scales each layer's map by :math:`\tanh(2 m)` before fusing (the paper's
    equation 9), as torchcam does.

    Example:
        >>> with LayerCAM(model, ["layer3", "layer4"]) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
        ...     fused = cam_extractor.fuse_cams(cams)
    """

    _method = "layercam"

    @staticmethod
    def _scale_cams(cams: list[Tensor], gamma: float = 2.0) -> list[Tensor]:
        return [torch.tanh(gamma * cam) for cam in cams]


class LeGrad(_CAM):
    r"""LeGrad (camkit-contrib's ``legrad``): each target block's positive gradients of its own
    class score by its attention probabilities, averaged over heads and queries, the leading
    key token dropped, then averaged over the blocks into one map.

    camkit computes each block's map in its own forward on the recorded input (through the
    engine's attention pass, which reads torchvision's ``nn.MultiheadAttention`` and timm's
    ``Attention``) and averages them here; the class score of a block is the model's final
    norm and head on the mean of the block's tokens, as torchcam's built-in projection for
    torchvision. Differences: the user's forward may run without gradients; a custom
    ``score_projection``, ``prefix_tokens`` other than the class token and ``grid_shape``
    are not supported (camkit reads the grid from the input size) and raise ``ConfigError``.

    Example:
        >>> with LeGrad(model, list(model.encoder.layers)[-4:]) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cam = cam_extractor(scores[0].argmax().item())[0]
    """

    _method = "legrad"
    _needs_gradients = True
    _targets_supported = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | list[nn.Module | str],
        *,
        score_projection: Any = None,
        prefix_tokens: int = 1,
        grid_shape: tuple[int, int] | None = None,
        enable_hooks: bool = True,
    ) -> None:
        if target_layer is None or (isinstance(target_layer, list) and not target_layer):
            raise LayerError("LeGrad needs at least one explicit target block")
        if score_projection is not None or prefix_tokens != 1 or grid_shape is not None:
            raise ConfigError(
                "camkit's LeGrad reads the class score, the class token and the patch grid of "
                "torchvision's and timm's VisionTransformer itself: score_projection, "
                "prefix_tokens and grid_shape cannot be changed"
            )
        super().__init__(model, target_layer, enable_hooks=enable_hooks)

    def _maps(self, result: camkit.CAMResult) -> list[Tensor]:
        return [torch.stack(list(result.layer_maps.values())).mean(0)]
