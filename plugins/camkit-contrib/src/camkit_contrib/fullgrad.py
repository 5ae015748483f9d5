"""FullGrad: the input-gradient and the bias-gradients of every layer, post-processed and summed.

In camkit-contrib rather than the built-ins: FullGrad is not a class activation map (it
ignores the target layer and explains through every layer with a bias), its map depends on
the architecture's choice of biases and batch norms, and it costs a backward pass to the
input; it is kept for parity with pytorch-grad-cam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import Tensor


class FullGradConfig(camkit.MethodConfig):
    eps: float = camkit.Field(
        1e-7,
        ge=0,
        description="each term's map is scaled as (m - min) / (max(m - min) + eps); "
        "pytorch-grad-cam's 1e-7 lets nearly-zero terms stay nearly zero",
    )


def scale(maps: Tensor, eps: float) -> Tensor:
    """``(m - min) / (max(m - min) + eps)`` of each map over its spatial dimensions
    (``(B, C, *spatial)``, per batch row and channel)."""
    flat = maps.flatten(2)
    flat = flat - flat.amin(-1, keepdim=True)
    return (flat / (flat.amax(-1, keepdim=True) + eps)).view(maps.shape)


def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """``(B, *spatial)`` maps resized to ``size`` (bilinear or trilinear, half-pixel centres)."""
    import torch.nn.functional as F

    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


class FullGrad(camkit.Method):
    r"""FullGrad (Srinivas & Fleuret, 2019): the full-gradient saliency map.

    .. math::

        S(x) = \sum_c \psi\big(|x_c \odot \nabla_{x_c} y^{(c)}|\big)
            + \sum_{l} \sum_{k} \psi\big(|b_{l,k} \,
              \partial y^{(c)} / \partial z_{l,k}|\big)

    where :math:`z_{l,k}` is channel :math:`k` of the output of layer :math:`l` (every
    convolution with a bias and every batch norm), :math:`b_{l,k}` its bias (a batch norm's
    effective bias :math:`\beta - \mu\gamma/\sqrt{\sigma^2 + \epsilon}` from its running
    statistics), and :math:`\psi` scales each map to ``[0, 1]`` (``(m - min) / (max(m - min) +
    eps)``) and resizes it to the input (bilinear). The sum is then min-max normalized like
    every camkit map. For piecewise-linear networks the raw terms add up to the score exactly
    (the full-gradient decomposition); the absolute values and the scaling make the map.

    As in pytorch-grad-cam, each input channel and each bias channel is scaled on its own,
    and linear layers' biases (no spatial extent) are left out. The target layer is not used:
    any layer can be given (each layer's map is the same). One extra forward and backward
    pass to the input per call (see :meth:`camkit.Context.bias_gradients`).

    Example:
        >>> cam = camkit.create("fullgrad", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "fullgrad"
    summary = "FullGrad: input-gradient and every layer's bias-gradients, scaled and summed"
    paper = (
        "Srinivas & Fleuret, Full-Gradient Representation for Neural Network Visualization, "
        "NeurIPS 2019"
    )
    aliases = ("full-grad",)
    Config = FullGradConfig
    needs_gradients = True  # a backward pass, to the input (ctx.bias_gradients)
    relu = False  # every term is non-negative

    def map(self, ctx: camkit.Context) -> Tensor:
        parts = self.parts(ctx)
        total = next(parts).sum(1)
        for part in parts:
            total = total + part[:, 0]
        return total

    def parts(self, ctx: camkit.Context) -> Iterator[Tensor]:
        """The map's terms at the input's size, in order: ``(B, C_in, H, W)`` the scaled input
        term of each input channel, then one ``(B, 1, H, W)`` per layer with a bias (its
        channels scaled, resized and summed). The map is their sum over the channels."""
        eps = self.config.eps
        grad, terms = ctx.bias_gradients()
        size = tuple(ctx.inputs.shape[2:])
        yield scale((grad * ctx.inputs.detach()).abs().float(), eps)
        for _name, term in terms:
            yield upsample(scale(term.abs().float(), eps).sum(1), size)[:, None]
