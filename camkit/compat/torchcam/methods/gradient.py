"""torchcam's gradient-based extractors, computed by camkit.

Every extractor here but Smooth Grad-CAM++ computes its maps from the forward pass the user
ran: camkit differentiates the user's scores with respect to the recorded layer outputs (one
backward pass, as torchcam). Without that graph (scores computed under ``no_grad``, a second
call on the same scores, ``retain_graph=True``) camkit runs the recorded input afresh.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, EpsilonXGradCAM, extractor, seed_from_global_rng
from camkit.compat.torchcam.methods.core import _CAM, LayerArg, NotForwardedError
from camkit.engine.attention import attention_blocks, block_head, check_layout
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
    _from_recorded = True
    _needs_gradients = True
    _score_used = True


class GradCAM(_GradCAM):
    r"""Grad-CAM (camkit's ``gradcam``): channels weighted by their averaged gradient.

    .. math:: w_k^{(c)} = \frac{1}{H W} \sum_{i,j} \frac{\partial Y^{(c)}}{\partial A_k(i, j)}

    Example:
        >>> from camkit.compat.torchcam.methods import GradCAM
        >>> with GradCAM(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
        >>> cams[0].shape
        torch.Size([1, 2, 2])
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
        >>> from camkit.compat.torchcam.methods import GradCAMpp
        >>> with GradCAMpp(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

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
        >>> from camkit.compat.torchcam.methods import SmoothGradCAMpp
        >>> with SmoothGradCAMpp(model, "layer4", num_samples=4) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

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

    def _camkit_config(self) -> dict[str, Any]:
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
        >>> from camkit.compat.torchcam.methods import XGradCAM
        >>> with XGradCAM(model, "layer4") as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
        >>> cams[0].shape
        torch.Size([1, 2, 2])
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
        >>> from camkit.compat.torchcam.methods import LayerCAM
        >>> with LayerCAM(model, ["layer3", "layer4"]) as cam_extractor:
        ...     scores = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100, scores=scores)
        ...     fused = cam_extractor.fuse_cams(cams)
        >>> [cam.shape for cam in cams], fused.shape
        ([torch.Size([1, 4, 4]), torch.Size([1, 2, 2])], torch.Size([1, 4, 4]))
    """

    _method = "layercam"

    @staticmethod
    def _scale_cams(cams: list[Tensor], gamma: float = 2.0) -> list[Tensor]:
        return [torch.tanh(gamma * cam) for cam in cams]


class NotAnAttentionBlockError(LayerError, CompatTypeError):
    """A LeGrad target block holds no attention camkit reads (a ``TypeError``, as in
    torchcam, and a :class:`~camkit.errors.LayerError`)."""


class LeGrad(_CAM):
    r"""LeGrad (camkit-contrib's ``legrad``): each target block's positive gradients of its own
    class score by its attention probabilities, averaged over heads and queries, the leading
    ``prefix_tokens`` key tokens dropped, then averaged over the blocks into one map.

    camkit computes each block's map in its own forward on the recorded input (through the
    engine's attention pass, which reads ``nn.MultiheadAttention`` and timm's ``Attention``)
    and averages them here. The class score of a block is ``score_projection`` of its output
    tokens; by default the model's final norm and head on the mean of the block's tokens
    (torchvision's and timm's ``VisionTransformer``). The patch grid is ``grid_shape``, or
    the square of the tokens after the ``prefix_tokens`` leading ones, as in torchcam
    (camkit's ``grid=``).

    The shim does not patch the attention modules: the user's forward runs the model as it
    is, in any grad mode (``inference_mode`` too) and with attention dropout active in
    training mode (the map is the eval-mode one, as for every shim call), where torchcam
    raises. The target blocks are checked when the extractor is built, the rest (self-
    attention, the projection's scores, the grid) when it is called.

    Example:
        >>> from camkit.compat.torchcam.methods import LeGrad
        >>> with LeGrad(vit, list(vit.encoder.layers)[-4:]) as cam_extractor:
        ...     scores = vit(torch.rand(1, 3, 32, 32))
        ...     cam = cam_extractor(scores[0].argmax().item())[0]
        >>> cam.shape
        torch.Size([1, 4, 4])

    Args:
        model: input model
        target_layer: transformer block or blocks, as modules or their names
        score_projection: maps a block's ``(N, T, D)`` tokens to ``(N, classes)`` scores
        prefix_tokens: non-spatial key tokens to drop before the grid
        grid_shape: the patch grid ``(h, w)``; inferred when the patch count is a square
        enable_hooks: whether hooks should be enabled by default

    Raises:
        NotAnAttentionBlockError: a target block holds no attention camkit reads (a
            ``TypeError`` and a ``LayerError``).
        LayerError: a target block's ``nn.MultiheadAttention`` is not batch first, has
            separate key/value dimensions or added keys; no ``score_projection`` for a model
            other than torchvision's and timm's ``VisionTransformer``; when called: cross-
            attention, masks, blocks that do not return ``(N, T, D)`` tokens.
        CompatTypeError, ConfigError: invalid ``prefix_tokens``, ``grid_shape`` or
            ``score_projection``; when called, a grid that does not fit the tokens or
            ``score_projection`` scores not shaped ``(N, classes)``.
        GradientError: when called, a block's score that does not depend on its attention.
    """

    _method = "legrad"
    _needs_gradients = True
    _targets_supported = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | list[nn.Module | str],
        *,
        score_projection: Callable[[Tensor], Tensor] | None = None,
        prefix_tokens: int = 1,
        grid_shape: tuple[int, int] | None = None,
        enable_hooks: bool = True,
    ) -> None:
        if target_layer is None or (isinstance(target_layer, list) and not target_layer):
            raise LayerError("LeGrad needs at least one explicit target block")
        if not isinstance(prefix_tokens, int) or isinstance(prefix_tokens, bool):
            raise CompatTypeError("`prefix_tokens` must be an integer")
        if prefix_tokens < 0:
            raise ConfigError("`prefix_tokens` must be non-negative")
        if grid_shape is not None and (
            not isinstance(grid_shape, tuple)
            or len(grid_shape) != 2
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in grid_shape)
        ):
            raise CompatTypeError("`grid_shape` must be a tuple of two integers")
        if grid_shape is not None and min(grid_shape) <= 0:
            raise ConfigError("`grid_shape` dimensions must be positive")
        if score_projection is not None and not callable(score_projection):
            raise CompatTypeError("`score_projection` must be callable")
        self.score_projection = score_projection
        self.prefix_tokens = prefix_tokens
        self.grid_shape = grid_shape
        self._grid: tuple[int, int] | None = None
        super().__init__(model, target_layer, enable_hooks=enable_hooks)

    def _target_names(
        self, model: nn.Module, target_layer: LayerArg, input_shape: tuple[int, ...]
    ) -> list[str]:
        """The target blocks' names, each checked to hold attention camkit reads, and the
        model checked to have a head for the blocks' scores unless ``score_projection`` is
        given (before any hook is registered)."""
        names = super()._target_names(model, target_layer, input_shape)
        for name in names:
            try:
                attention_blocks(model, name, self.submodule_dict[name])
            except LayerError as exc:
                raise NotAnAttentionBlockError(str(exc)) from None
            check_layout(model, name, self.submodule_dict[name])
        if self.score_projection is None:
            try:
                block_head(model)
            except LayerError as exc:
                raise LayerError(
                    f"{exc}; pass `score_projection`, a callable from a block's (N, T, D) "
                    "tokens to (N, classes) scores"
                ) from None
        return names

    def _hook_a(self, module: nn.Module, _input: Any, output: Tensor, idx: int = 0) -> None:
        if self._hooks_enabled and (not isinstance(output, Tensor) or output.ndim != 3):
            raise LayerError(
                "LeGrad target blocks must return tokens shaped (batch, tokens, embedding)"
            )
        super()._hook_a(module, _input, output, idx)

    def _patch_grid(self) -> tuple[int, int]:
        """torchcam's grid: ``grid_shape``, or the square of the tokens after the prefix."""
        fmap = self.hook_a[0]
        if fmap is None:
            raise NotForwardedError(
                "no block tokens were recorded: forward inputs through the model (with hooks "
                "enabled) before calling the extractor"
            )
        patches = fmap.shape[1] - self.prefix_tokens
        if patches <= 0:
            raise ConfigError("`prefix_tokens` must leave at least one patch token")
        if self.grid_shape is not None:
            if self.grid_shape[0] * self.grid_shape[1] != patches:
                raise ConfigError("`grid_shape` does not match the number of patch tokens")
            return self.grid_shape
        side = math.isqrt(patches)
        if side * side != patches:
            raise ConfigError("unable to infer a square patch grid; specify `grid_shape`")
        return side, side

    def _run_model(self, targets: Any) -> camkit.CAMResult:
        grid = self._patch_grid()
        if self._extractor is None or grid != self._grid:
            config = {
                "score_projection": self.score_projection,
                "prefix_tokens": self.prefix_tokens,
            }
            self._extractor = extractor(
                self._method, self.model, self.target_names, config, grid=grid
            )
            self._grid = grid
        return super()._run_model(targets)

    def _maps(self, result: camkit.CAMResult) -> list[Tensor]:
        return [torch.stack(list(result.layer_maps.values())).mean(0)]

    def _extra_repr(self) -> str:
        return f"{super()._extra_repr()}, prefix_tokens={self.prefix_tokens}"
