"""The plugin contract: what a CAM method declares and what the engine hands it.

A method is a small class: a name, a pydantic ``Config``, and a *weight strategy*
(:meth:`Method.weights`) or, for methods that compute the map directly, :meth:`Method.map`.
Everything else (layers, hooks, batching, gradients, ReLU, the weighted sum, normalization,
upsampling, fusion) is the engine's job.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import pluggy
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import Tensor, nn

__all__ = [
    "Context",
    "ExplainerSpec",
    "Field",
    "Method",
    "MethodConfig",
    "ModelServices",
    "hookimpl",
    "minmax_normalize",
]

#: Marks a plugin's implementation of a camkit hook (see :mod:`camkit.hookspecs`).
hookimpl = pluggy.HookimplMarker("camkit")


class MethodConfig(BaseModel):
    """Base class of every method's configuration.

    Subclasses declare fields with type hints and :func:`camkit.Field` constraints. Unknown
    keys are an error, and a validated config is immutable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelServices(Protocol):
    """What the engine provides for one call: every pass through the model goes through it.

    Methods never see this object; they use :class:`Context`, which wraps it for one layer.
    """

    inputs: Tensor
    targets: Tensor
    scores: Tensor
    baseline_scores: Tensor
    model: nn.Module

    def activations(self, layer: str) -> Tensor: ...
    def prefix_tokens(self, layer: str) -> int: ...
    def gradients(self, layer: str) -> Tensor: ...
    def score(
        self, masks: Tensor, *, noise_std: float, generator: torch.Generator | None
    ) -> Tensor: ...
    def score_layer(self, layer: str, masks: Tensor) -> Tensor: ...
    def gradients_at(self, layer: str, inputs: Tensor) -> Tensor: ...
    def hessian_vector_product(self, layer: str, vectors: Tensor) -> tuple[Tensor, Tensor]: ...
    def attention_gradients(
        self, layer: str, last: int | None, project: Callable[[Tensor], Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor]]: ...
    def module(self, name: str) -> nn.Module: ...
    def guided_gradients(self) -> Tensor: ...
    def bias_gradients(self) -> tuple[Tensor, list[tuple[str, Tensor]]]: ...


class Context:
    """What the engine captured for one target layer, and the services a method may use.

    Every forward and backward pass a method asks for goes through the engine's services
    for the call: chunked by the run option ``batch_size``, in the run options' precision and
    memory layout, with progress bars and health checks.

    Attributes:
        layer: the target layer's dotted name.
        activations: ``(B, C, h, w)`` (or ``(B, C, t, h, w)``) output of the layer on the
            clean input, already in channels-first layout.
        inputs: ``(B, C_in, H, W)`` the input the model was explained on.
        targets: ``(B,)`` long class indices (``-1`` for callable targets).
        scores: the model's clean output scores, usually ``(B, num_classes)``.
        baseline_scores: ``(B,)`` target scores of the clean input.
        model: the model being explained (do not modify it).
        prefix_tokens: for a layer that outputs tokens ``(B, N, D)``, how many leading tokens
            (class, register) are not part of the grid and so not in :attr:`activations`;
            ``0`` for feature maps.
    """

    def __init__(self, layer: str, services: ModelServices) -> None:
        self.layer = layer
        self._services = services
        self.activations = services.activations(layer)
        self.inputs = services.inputs
        self.targets = services.targets
        self.scores = services.scores
        self.baseline_scores = services.baseline_scores
        self.model = services.model
        self.prefix_tokens = services.prefix_tokens(layer)

    def __repr__(self) -> str:
        return f"Context(layer={self.layer!r}, activations={tuple(self.activations.shape)})"

    @property
    def gradients(self) -> Tensor:
        """``(B, C, h, w)`` d(target score)/d(activations), like :attr:`activations`.

        The backward pass runs when a method first reads them (one pass for every layer).

        Raises:
            PluginError: the method does not declare ``needs_gradients = True``.
        """
        return self._services.gradients(self.layer)

    def score(
        self,
        masks: Tensor,
        *,
        noise_std: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Target scores of the input multiplied by each mask.

        Args:
            masks: ``(B, M, h, w)`` masks at any resolution; each is upsampled (bilinear) to
                the input size, optionally given additive Gaussian noise, and multiplied into
                its own image.
            noise_std: standard deviation of noise added to each upsampled mask. Every mask
                draws its own noise from ``generator`` in a fixed order, so the result does
                not depend on the batch size.
            generator: random source for the noise.

        Returns:
            ``(B, M)`` target scores under ``torch.inference_mode()``. Identical masks of one
            image are forwarded once.

        Example:
            >>> gains = ctx.score(minmax_normalize(ctx.activations)) - ctx.baseline_scores[:, None]
        """
        return self._services.score(masks, noise_std=noise_std, generator=generator)

    def score_layer(self, masks: Tensor) -> Tensor:
        """Target scores with this layer's output multiplied channel-wise by each mask.

        Args:
            masks: ``(B, M, C)`` channel masks; row ``(b, m)`` forwards image ``b`` with
                channel ``k`` of this layer's output multiplied by ``masks[b, m, k]`` (``0``
                ablates the channel). A broadcast tensor (``expand``) is fine: masks are read
                one chunk at a time.

        Returns:
            ``(B, M)`` target scores under ``torch.inference_mode()``.

        Example:
            >>> B, C = ctx.activations.shape[:2]
            >>> ablated = ctx.score_layer((1 - torch.eye(C)).expand(B, C, C))
        """
        return self._services.score_layer(self.layer, masks)

    def gradients_at(self, inputs: Tensor) -> Tensor:
        """Gradients at this layer for other inputs (e.g. noisy copies of :attr:`inputs`).

        Args:
            inputs: ``(N * B, C_in, H, W)``: ``N`` stacked variants of the batch, ordered
                ``[variant 0 of every image, variant 1 of every image, ...]``; each row is
                scored for the target of its image.

        Returns:
            ``(N * B, C, h, w)`` gradients.

        Example:
            >>> noisy = ctx.inputs + 0.1 * torch.randn_like(ctx.inputs)
            >>> grads = ctx.gradients_at(noisy)
        """
        return self._services.gradients_at(self.layer, inputs)

    def guided_gradients(self) -> Tensor:
        """The gradient of the target score with respect to the input, through guided ReLUs.

        Every ReLU the forward calls (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or
        not) passes back only positive gradients at positive inputs (Springenberg et al.,
        2015); the model's modules are not changed. One forward and backward pass per call,
        chunked by ``batch_size``, shared by every layer that asks.

        Returns:
            ``(B, C_in, H, W)`` gradients, like :attr:`inputs`.

        Example:
            >>> saliency = ctx.guided_gradients().abs().amax(1)  # (B, H, W)
        """
        return self._services.guided_gradients()

    def bias_gradients(self) -> tuple[Tensor, list[tuple[str, Tensor]]]:
        """The full gradients (Srinivas & Fleuret, 2019): the input gradient and the
        bias-gradient of every convolution and batch norm with a bias.

        Returns:
            ``(input_gradient, terms)``: ``(B, C_in, H, W)`` d(target)/d(input), and for each
            application of a layer with a bias, in forward order, ``(name, b * dY/dz)``: its
            ``(B, C, h, w)`` bias (a batch norm's effective bias from its running statistics)
            times the gradient at its output. One forward and backward pass per call.

        Example:
            >>> grad, terms = ctx.bias_gradients()
            >>> total = (grad * ctx.inputs).abs().sum(1)
        """
        return self._services.bias_gradients()

    def hessian_vector_product(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        r"""The gradient at this layer and its Hessian times ``vectors`` (a second-order pass).

        With :math:`y` the target score and :math:`A` this layer's activations, returns
        :math:`g = \partial y / \partial A` and :math:`H v`, :math:`H = \partial^2 y /
        \partial A^2`, from one extra forward and a double backward per chunk of images
        (``batch_size``); zero where :math:`y` is linear in :math:`A` after the layer.

        Args:
            vectors: ``(B, C, h, w)``, shaped like :attr:`activations`.

        Returns:
            ``(g, Hv)``, both ``(B, C, h, w)``.

        Example:
            >>> g, hv = ctx.hessian_vector_product(ctx.activations)
        """
        return self._services.hessian_vector_product(self.layer, vectors)

    def attention_gradients(
        self, last: int | None = None, project: Callable[[Tensor], Tensor] | None = None
    ) -> list[tuple[Tensor, Tensor]]:
        """Attention probabilities of the ViT blocks at or inside this layer, with gradients.

        For each block (this layer, or the blocks of the stack this layer is; the ``last``
        ones when given), ``(P, dP)``: its ``(B, heads, N, N)`` post-softmax attention
        probabilities and the gradient by them of the block's own target score: by default
        the model's classifier on the block's mean output token, for torchvision's and
        timm's ``VisionTransformer``; for other models ``project``, which maps a block's
        ``(B, N, D)`` output tokens to ``(B, classes)`` scores (without it they raise
        :class:`~camkit.errors.LayerError`). Blocks are modules with a
        ``nn.MultiheadAttention`` or timm ``Attention`` child (see
        :mod:`camkit.engine.attention`). One extra forward per chunk.

        Example:
            >>> for probs, grads in ctx.attention_gradients(last=4):
            ...     relevance = (grads * probs).clamp(min=0).mean(1)  # (B, N, N)
        """
        return self._services.attention_gradients(self.layer, last, project)

    def module(self, name: str) -> nn.Module:
        """Resolve another submodule of the model by the same rules as target layers.

        Example:
            >>> classifier = ctx.module("fc")
        """
        return self._services.module(name)

    @staticmethod
    def generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
        """A random generator seeded with ``seed`` (a fresh random seed when ``None``).

        Example:
            >>> gen = ctx.generator(self.config.seed, ctx.inputs.device)
        """
        import torch

        gen = torch.Generator(device=device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen


def minmax_normalize(maps: Tensor, spatial_dims: int = 2) -> Tensor:
    """Min-max normalize each map over its last ``spatial_dims`` dimensions.

    ``(m - min) / (max - min)`` per map; a constant map becomes all zeros, never NaN.

    Example:
        >>> masks = minmax_normalize(ctx.activations)  # (B, C, h, w), each channel in [0, 1]
    """
    import torch

    flat = maps.flatten(-spatial_dims)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    # A constant map has m - lo == 0 exactly, so any positive span gives zeros.
    span = (hi - lo).clamp_min_(torch.finfo(flat.dtype).tiny)
    return (flat - lo).div_(span).view(maps.shape)


class Method:
    """Base class of CAM methods.

    Subclasses set the class attributes below and implement :meth:`weights` (channel weights
    ``(B, C)`` or pixel weights ``(B, C, h, w)``) or, when the map is not a weighted sum of
    activation channels, :meth:`map`. The engine applies ReLU when :attr:`relu` is true.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_gradients: ClassVar[bool] = False
    #: The method runs the model many times per image (:meth:`Context.score`,
    #: :meth:`Context.score_layer`, :meth:`Context.gradients_at`). It declares only *that*;
    #: how those forwards run (``batch_size``, ``precision``, layout) is the engine's run
    #: options' business.
    many_forwards: ClassVar[bool] = False
    relu: ClassVar[bool] = True
    #: The method reads the attention of a vision transformer's blocks
    #: (:meth:`Context.attention_gradients`); other models get a ``LayerError`` saying so.
    needs_attention: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None) -> None:
        self.config: Any = config if config is not None else self.Config()

    def weights(self, ctx: Context) -> Tensor:
        """Return ``(B, C)`` channel weights or ``(B, C, h, w)`` pixel weights."""
        raise NotImplementedError(f"method {self.name!r} implements neither weights() nor map()")

    def map(self, ctx: Context) -> Tensor:
        """Return the ``(B, h, w)`` map before ReLU, for methods that are no weighted sum.

        The map is at the layer's resolution, or at the input's (``(B, H, W)``) for methods
        built on input gradients (:meth:`Context.guided_gradients`). Only override this when
        the map is not ``sum_k w_k A_k``; otherwise implement
        :meth:`weights` and let the engine form the sum.
        """
        raise NotImplementedError

    def objective(self, targets: Any) -> Any:
        """The targets the engine scores for the caller's ``targets`` (default: the same).

        A method that explains another objective (Finer-CAM's contrast) returns its callable.
        """
        return targets

    def fuse(self, layer_maps: list[Tensor], size: tuple[int, ...]) -> Tensor | None:
        """``(B, *size)`` maps in ``[0, 1]`` from the layers' maps, or ``None`` for the
        engine's fusion (each normalized and resized, then their maximum)."""
        return None

    @classmethod
    def computes_map(cls) -> bool:
        """Whether the method overrides :meth:`map` instead of producing weights."""
        return cls.map is not Method.map

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


@dataclass(frozen=True)
class ExplainerSpec:
    """Describes an *explainer*: an explanation method that is no CAM method.

    Some methods do not fit :class:`Method`: they have no target class, return several maps
    per image, or a result type of their own (Deep Feature Factorization returns a map per
    concept). A plugin publishes them through the ``camkit_explainers`` hook as plain data, so
    ``camkit methods`` lists them without importing the plugin's code (nor torch); the user
    imports and calls them directly. camkit does not run them: :func:`camkit.create` and
    ``camkit explain`` take CAM methods only.

    Attributes:
        name: lower-case letters, digits and hyphens; shares one namespace with the methods.
        summary: one line.
        target: ``"module:qualname"`` of the class (or function) to call.
        returns: ``"module:qualname"`` of the result type it returns.
        paper: the reference, ``"Author et al., Title, Venue Year"``.
        aliases: other names ``camkit methods NAME`` accepts.
        function: ``"module:qualname"`` of a one-call function form, if any.
        example: one line showing the call.
        needs_gradients: it runs a backward pass.
        many_forwards: it runs the model many times per image.

    Example:
        >>> spec = ExplainerSpec(
        ...     name="dff",
        ...     summary="Deep Feature Factorization: concepts by NMF of a layer's activations",
        ...     target="camkit_contrib.dff:DeepFeatureFactorization",
        ...     returns="camkit_contrib.dff:DFFResult",
        ... )
        >>> spec.import_path()
        'from camkit_contrib.dff import DeepFeatureFactorization'
    """

    name: str
    summary: str
    target: str
    returns: str
    paper: str = ""
    aliases: tuple[str, ...] = ()
    function: str = ""
    example: str = ""
    needs_gradients: bool = False
    many_forwards: bool = False

    #: Explainers are never vision-transformer-only (the table's ``needs`` column reads it).
    needs_attention: ClassVar[bool] = False

    def import_path(self, which: str = "target") -> str:
        """The import statement for ``target``, ``returns`` or ``function``."""
        module, _, qualname = getattr(self, which).partition(":")
        return f"from {module} import {qualname.partition('.')[0]}"

    def load(self, which: str = "target") -> Any:
        """Import and return the object ``target`` (or ``returns``, ``function``) names."""
        module, _, qualname = getattr(self, which).partition(":")
        value: Any = importlib.import_module(module)
        for part in qualname.split("."):
            value = getattr(value, part)
        return value
