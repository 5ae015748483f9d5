"""ShapleyCAM: Grad-CAM's channel weights with a second-order (Hessian-vector) correction."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from torch import Tensor


class ShapleyCAM(camkit.Method):
    r"""ShapleyCAM: channels weighted by the gradient minus half the Hessian-vector product.

    With :math:`y` the target score, :math:`A` the layer's activations,
    :math:`g = \partial y / \partial A` and :math:`H = \partial^2 y / \partial A^2`:

    .. math::

        L^{(c)}_{ShapleyCAM} = ReLU\Big(\sum_k w_k A_k\Big), \qquad
        w_k = \frac{1}{h w} \sum_{i,j} \Big(g - \tfrac{1}{2} H A\Big)_k(i, j)

    The paper reads CAMs as estimates of each channel's Shapley value in a game whose value is
    the score; a second-order Taylor expansion of :math:`y` around the activations gives
    :math:`g - \frac{1}{2} H A` as the per-unit contribution, which reduces to Grad-CAM's
    weights where the score is linear in :math:`A` after the layer (:math:`H A = 0`, as for
    a ReLU network's last convolutional block followed by pooling and a linear head).
    :math:`H A` comes from the engine's second-order pass
    (:meth:`camkit.Context.hessian_vector_product`: one extra forward and a double backward).
    """

    name = "shapleycam"
    summary = "ShapleyCAM: gradient minus half the Hessian-vector product, spatially averaged"
    paper = (
        "Cai, CAMs as Shapley Value-based Explainers, arXiv:2501.06261, 2025 (The Visual Computer)"
    )
    aliases = ("shapley-cam",)
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        g, hv = ctx.hessian_vector_product(ctx.activations)
        return (g - 0.5 * hv).flatten(2).mean(-1)
