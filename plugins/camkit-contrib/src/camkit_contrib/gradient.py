"""Gradient methods that keep the gradient's spatial resolution instead of averaging it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from torch import Tensor


class HiResCAM(camkit.Method):
    r"""HiResCAM: the gradient multiplied element-wise into the activations.

    .. math::

        L^{(c)}_{HiResCAM}(x, y) = ReLU\Big(\sum_k
            \frac{\partial Y^{(c)}}{\partial A_k(x, y)} \, A_k(x, y)\Big)

    Grad-CAM averages :math:`\partial Y^{(c)} / \partial A_k` over space before weighting
    channel :math:`k`; HiResCAM keeps one weight per location, so the map only highlights
    locations the score actually depends on. When the score is a linear head over globally
    pooled features, the map is each location's exact contribution to the score (CAM scaled by
    the pooling factor). As for Grad-CAM, to which the paper compares it throughout, the map is
    passed through a ReLU to keep the positive evidence.
    """

    name = "hirescam"
    summary = "HiResCAM: gradients times activations element-wise, summed over channels"
    paper = (
        "Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful explanations of "
        "convolutional neural networks, arXiv:2011.08891, 2020"
    )
    aliases = ("hires-cam",)
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.gradients


class GradCAMElementWise(camkit.Method):
    r"""Element-wise Grad-CAM: HiResCAM's products, each rectified before the channel sum.

    .. math::

        L^{(c)}(x, y) = \sum_k ReLU\Big(
            \frac{\partial Y^{(c)}}{\partial A_k(x, y)} \, A_k(x, y)\Big)

    A location counts the channels that raise the score there and ignores those that lower it,
    where HiResCAM lets them cancel. The variant has no paper of its own; it is HiResCAM
    (Draelos & Carin, 2020) with the rectification moved inside the sum. As pixel weights it
    is :math:`w_k(x, y) = \partial Y^{(c)} / \partial A_k(x, y)` wherever the product is
    positive and 0 elsewhere, so the engine's :math:`\sum_k w_k A_k` is the formula above.
    """

    name = "gradcam-elementwise"
    summary = "Grad-CAM element-wise: ReLU of gradients times activations, summed over channels"
    paper = (
        "A variant of HiResCAM: Draelos & Carin, Use HiResCAM instead of Grad-CAM for faithful "
        "explanations of convolutional neural networks, arXiv:2011.08891, 2020"
    )
    aliases = ("gradcam-element-wise",)
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        grads = ctx.gradients
        return grads * (grads * ctx.activations > 0)
