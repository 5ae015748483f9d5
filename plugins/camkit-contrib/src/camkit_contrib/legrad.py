"""LeGrad: a ViT's attention gradients, layer by layer, averaged into one map."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from pydantic.json_schema import WithJsonSchema

import camkit
from camkit.errors import LayerError

if TYPE_CHECKING:
    from torch import Tensor

#: How ``score_projection`` shows in the config's JSON schema (a callable has no JSON form).
_PROJECTION_SCHEMA = {"type": "null", "description": "a Python callable, or null"}


class LeGradConfig(camkit.MethodConfig):
    blocks: int | None = camkit.Field(
        None,
        gt=0,
        description=(
            "aggregate only the last this many attention blocks at or inside the target layer "
            "(None: all of them)"
        ),
    )
    score_projection: Annotated[Callable[..., Any] | None, WithJsonSchema(_PROJECTION_SCHEMA)] = (
        camkit.Field(
            None,
            description=(
                "a callable mapping a block's (B, N, D) output tokens to (B, classes) scores, for "
                "models other than torchvision's and timm's VisionTransformer (None: the model's "
                "final norm and head on the mean token)"
            ),
        )
    )
    prefix_tokens: int | None = camkit.Field(
        None,
        ge=0,
        description=(
            "how many leading tokens (class, register) precede the patch grid; camkit reads "
            "them from the layer's grid (pass grid=(h, w) to camkit.create when it cannot "
            "infer it), and a different count raises LayerError (None: no check)"
        ),
    )


class LeGrad(camkit.Method):
    r"""LeGrad: positive gradients of each block's score by its attention, averaged.

    For each attention block :math:`l` at or inside the target layer (the layer can be one
    block or the stack of blocks), with :math:`P^l` its ``(heads, N, N)`` post-softmax
    attention and :math:`s^l` the block's own target score (the model's final norm and
    classifier on the mean of the block's output tokens):

    .. math::

        E^l = \frac{1}{H N} \sum_{h, q} ReLU\Big(\frac{\partial s^l}{\partial P^l_{h, q, :}}
        \Big), \qquad L = \frac{1}{|l|} \sum_l E^l_{\text{patches}}

    where the key tokens that lead the grid (class and register tokens) are dropped and the
    patch keys are laid out on the layer's grid. The attention values themselves are not
    multiplied in. The map is non-negative; it is normalized like every camkit map. Needs
    torchvision's or timm's ``VisionTransformer`` (see :meth:`camkit.Context.attention_gradients`
    for how the attention is read without changing the model). With several target layers
    each gets its own average and camkit fuses the layers as usual; to average blocks as the
    paper does, give their stack as one layer (``encoder.layers``, ``blocks``) and ``blocks=``.

    Other transformers whose blocks have a ``nn.MultiheadAttention`` (batch first) or timm
    ``Attention`` child work with ``score_projection=``: a callable from a block's ``(B, N, D)``
    output tokens to ``(B, classes)`` scores (the paper's per-block class score for that
    model). The patch grid is the one camkit reads from the layer's tokens (the last
    ``h * w`` tokens; ``grid=(h, w)`` of :func:`camkit.create` sets it, and with it the
    number of leading tokens); ``prefix_tokens=`` checks that count.

    Example:
        >>> project = lambda tokens: vit.heads(vit.encoder.ln(tokens.mean(1)))
        >>> cam = camkit.create("legrad", vit, "encoder.layers", score_projection=project)
        >>> cam(torch.rand(2, 3, 32, 32)).maps.shape
        torch.Size([2, 32, 32])
    """

    name = "legrad"
    summary = "LeGrad: ViT attention gradients of each block's score, averaged over blocks"
    paper = (
        "Bousselham et al., LeGrad: An Explainability Method for Vision Transformers via "
        "Feature Formation Sensitivity, arXiv:2404.03214, 2024"
    )
    aliases = ("le-grad",)
    Config = LeGradConfig
    needs_gradients = True
    needs_attention = True

    def map(self, ctx: camkit.Context) -> Tensor:
        import torch

        config = self.config
        b, grid, lead = ctx.activations.shape[0], ctx.activations.shape[2:], ctx.prefix_tokens
        if config.prefix_tokens is not None and config.prefix_tokens != lead:
            raise LayerError(
                f"layer {ctx.layer!r} was read as {lead} leading tokens and a "
                f"{'x'.join(map(str, grid))} grid, not {config.prefix_tokens} leading tokens; "
                "pass grid=(h, w) to camkit.create"
            )
        pairs = ctx.attention_gradients(config.blocks, config.score_projection)
        maps = [g.clamp_min(0).mean((1, 2))[:, lead:] for _, g in pairs]
        relevance = torch.stack(maps).mean(0)
        if relevance.shape[-1] != grid.numel():
            raise LayerError(
                f"layer {ctx.layer!r} has {grid.numel()} grid tokens but its attention has "
                f"{relevance.shape[-1]} keys after the {lead} leading ones"
            )
        return relevance.reshape(b, *grid)
