"""Guided Backpropagation and Guided Grad-CAM: input gradients through guided ReLUs.

In camkit-contrib rather than the built-ins: neither is a class activation map (guided
backpropagation explains the input's pixels, not a layer, and is known to be nearly
class-insensitive: Adebayo et al., 2018, "Sanity checks for saliency maps"), and both are
kept for parity with pytorch-grad-cam.

Both are registered methods whose map is a ``(B, H, W)`` channel aggregate of the per-pixel,
per-channel result (``channels``: the maximum absolute value over the input channels by
default, as in Simonyan et al.'s saliency maps). The full ``(B, C_in, H, W)`` result, which is
what pytorch-grad-cam returns, comes from :func:`guided_backprop` and :func:`guided_gradcam`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import camkit
from camkit_contrib.fullgrad import scale, upsample

if TYPE_CHECKING:
    from torch import Tensor, nn

Channels = Literal["max-abs", "sum-abs", "sum"]


class GuidedConfig(camkit.MethodConfig):
    channels: Channels = camkit.Field(
        "max-abs",
        description="how the input channels make one map: max-abs (max |g| over channels), "
        "sum-abs (sum of |g|) or sum (signed sum; min-max normalized, so negative is low)",
    )


def aggregate(values: Tensor, channels: Channels) -> Tensor:
    """``(B, C, *spatial) -> (B, *spatial)`` by ``channels``."""
    if channels == "max-abs":
        return values.abs().amax(1)
    if channels == "sum-abs":
        return values.abs().sum(1)
    return values.sum(1)


def gradcam_mask(ctx: camkit.Context, eps: float = 1e-7) -> Tensor:
    """``(B, H, W)`` Grad-CAM of the context's layer as pytorch-grad-cam shows it: ReLU of
    :math:`\\sum_k \\bar g_k A_k`, scaled to ``[0, 1]``, resized to the input (bilinear) and
    scaled again."""
    acts, grads = ctx.activations.float(), ctx.gradients.float()
    spatial = tuple(range(2, acts.dim()))
    cam = (grads.mean(spatial, keepdim=True) * acts).sum(1).relu()
    cam = upsample(scale(cam[:, None], eps)[:, 0], tuple(ctx.inputs.shape[2:]))
    return scale(cam[:, None], eps)[:, 0]


class GuidedBackprop(camkit.Method):
    r"""Guided Backpropagation (Springenberg et al., 2015).

    .. math::

        G = \frac{\partial y^{(c)}}{\partial x}\Big|_{\text{guided}}, \qquad
        R^{(l)} = \mathbb{1}[z^{(l)} > 0] \cdot \mathbb{1}[R^{(l+1)} > 0] \cdot R^{(l+1)}

    the gradient of the target score with respect to the input where every ReLU's backward
    passes a gradient :math:`R^{(l+1)}` only where both the ReLU's input :math:`z^{(l)}` and
    the gradient are positive. The map is :math:`\max_c |G_c|` (option ``channels``). The
    target layer is not used (any layer can be given); every ReLU the forward calls is guided,
    ``nn.ReLU`` modules and functional ``relu`` alike, without changing the model
    (:meth:`camkit.Context.guided_gradients`).

    Example:
        >>> cam = camkit.create("guidedbackprop", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "guidedbackprop"
    summary = "Guided Backpropagation: input gradients through ReLUs that pass positive gradients"
    paper = (
        "Springenberg et al., Striving for Simplicity: The All Convolutional Net, ICLR "
        "workshop 2015"
    )
    aliases = ("guided-backprop", "guided-backpropagation")
    Config = GuidedConfig
    needs_gradients = True  # a backward pass, to the input (ctx.guided_gradients)
    relu = False  # the aggregate decides the sign

    def __init__(self, config: camkit.MethodConfig | None = None) -> None:
        super().__init__(config)
        self.keep = False  # set by guided_backprop() / guided_gradcam(), which read `kept`
        self.kept: Tensor | None = None

    def values(self, ctx: camkit.Context) -> Tensor:
        """``(B, C_in, H, W)`` the guided gradients."""
        return ctx.guided_gradients()

    def map(self, ctx: camkit.Context) -> Tensor:
        values = self.values(ctx)
        if self.keep:
            self.kept = values.detach()
        return aggregate(values.float(), self.config.channels)


class GuidedGradCAM(GuidedBackprop):
    r"""Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times Grad-CAM.

    .. math::

        GG_c = G_c \odot \mathrm{up}\big(ReLU(\textstyle\sum_k \bar g_k A_k)\big)

    where :math:`G` is the guided backpropagation (:class:`GuidedBackprop`), :math:`\bar g_k`
    the spatial mean of the gradient at channel :math:`k` of the target layer, and up the
    Grad-CAM map scaled to ``[0, 1]`` and resized (bilinear) to the input, as
    pytorch-grad-cam's example combines them. The map is :math:`\max_c |GG_c|` (option
    ``channels``). Two backward passes: one to the layer, one guided to the input.

    Example:
        >>> cam = camkit.create("guidedgradcam", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "guidedgradcam"
    summary = "Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map"
    paper = (
        "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks via Gradient-based "
        "Localization, ICCV 2017"
    )
    aliases = ("guided-gradcam", "guided-grad-cam")

    def values(self, ctx: camkit.Context) -> Tensor:
        """``(B, C_in, H, W)`` guided gradients times the Grad-CAM mask."""
        return ctx.guided_gradients().float() * gradcam_mask(ctx)[:, None]


def _run(
    method: GuidedBackprop, model: nn.Module, x: Tensor, layer: Any, targets: Any, options: Any
) -> Tensor:
    method.keep = True
    camkit.Extractor(method, model, layer, options=camkit.RunOptions(**options))(x, targets)
    assert method.kept is not None
    return method.kept


def guided_backprop(
    model: nn.Module, x: Tensor, targets: Any = None, *, layer: Any = None, **options: Any
) -> Tensor:
    """``(B, C_in, H, W)`` guided backpropagation of ``x`` for ``targets`` (camkit's targets:
    ``None`` for the predicted classes, ints, or a callable).

    ``layer`` only serves the call's clean pass (located on ``x`` when ``None``); ``options``
    are run options (``batch_size``, ...).

    Example:
        >>> g = guided_backprop(model, images, [3, 7])  # pytorch-grad-cam: (H, W, C) of g[0]
    """
    return _run(GuidedBackprop(), model, x, layer, targets, options)


def guided_gradcam(
    model: nn.Module, x: Tensor, layer: Any, targets: Any = None, **options: Any
) -> Tensor:
    """``(B, C_in, H, W)`` Guided Grad-CAM of ``x`` for ``targets``, Grad-CAM at ``layer``.

    Example:
        >>> gg = guided_gradcam(model, images, "layer4", targets=[3, 7])
    """
    return _run(GuidedGradCAM(), model, x, layer, targets, options)
