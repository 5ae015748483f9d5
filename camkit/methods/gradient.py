"""Gradient-based methods: weights from d(score)/d(activations)."""

from __future__ import annotations

from torch import Tensor

from camkit.method import Context, Method


class GradCAM(Method):
    r"""Grad-CAM: channels weighted by their spatially averaged gradient.

    .. math::

        L^{(c)}_{Grad-CAM}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big), \qquad
        w_k^{(c)} = \frac{1}{H W} \sum_{i,j} \frac{\partial Y^{(c)}}{\partial A_k(i, j)}
    """

    name = "gradcam"
    summary = "Grad-CAM: activations weighted by spatially averaged gradients"
    paper = "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks, ICCV 2017"
    aliases = ("grad-cam",)
    needs_gradients = True

    def weights(self, ctx: Context) -> Tensor:
        assert ctx.gradients is not None
        return ctx.gradients.flatten(2).mean(-1)
