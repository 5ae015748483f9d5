"""Gradient-based methods: weights from d(score)/d(activations).

Notation: :math:`A_k` is channel :math:`k` of the target layer's activations, :math:`Y^{(c)}`
the score (logit) of target class :math:`c`, and :math:`g_k(i, j) = \\partial Y^{(c)} /
\\partial A_k(i, j)` the gradient the engine captures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from camkit.method import Context, Field, Method, MethodConfig

if TYPE_CHECKING:
    from torch import Tensor


def _spatial(t: Tensor) -> tuple[int, ...]:
    return tuple(range(2, t.dim()))


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
        return ctx.gradients.flatten(2).mean(-1)


class GradCAMpp(Method):
    r"""Grad-CAM++: positive gradients weighted per pixel by a closed-form :math:`\alpha`.

    .. math::

        L^{(c)}_{Grad-CAM++}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big), \qquad
        w_k^{(c)} = \sum_{i,j} \alpha_k^{(c)}(i, j)\, ReLU\big(g_k(i, j)\big)

    .. math::

        \alpha_k^{(c)}(i, j) = \frac{g_k(i, j)^2}
            {2\, g_k(i, j)^2 + \sum_{a,b} A_k(a, b)\, g_k(i, j)^3}

    (the paper's higher derivatives of :math:`\exp Y^{(c)}` written with first-order
    gradients), and :math:`\alpha = 0` where the denominator is exactly zero (e.g. where
    :math:`g = 0`). Only exact zeros are guarded: an additive epsilon would shift
    :math:`\alpha` for the small gradients of untrained or low-temperature models.
    """

    name = "gradcampp"
    summary = "Grad-CAM++: positive gradients weighted by closed-form pixel coefficients"
    paper = (
        "Chattopadhyay et al., Grad-CAM++: Improved Visual Explanations for Deep Convolutional "
        "Networks, WACV 2018"
    )
    aliases = ("grad-cam++", "gradcam++")
    needs_gradients = True

    def weights(self, ctx: Context) -> Tensor:
        # With D2 = g^2 and D3 = g^3, alpha = 1 / (2 + sum(A) g) wherever g != 0, and only
        # g > 0 counts (ReLU): the same weights as plusplus_weights(g, g**2, g**3, A) in half
        # the tensor operations, and without g^3 underflowing for tiny gradients.
        import torch

        g, acts = ctx.gradients, ctx.activations
        dims = _spatial(acts)
        denom = (acts.sum(dims, keepdim=True) * g).add_(2)
        return torch.where(denom != 0, torch.relu(g) / denom, 0).sum(dims)

    @staticmethod
    def plusplus_weights(d1: Tensor, d2: Tensor, d3: Tensor, activations: Tensor) -> Tensor:
        r"""``(B, C)`` weights :math:`\sum_{ij} \alpha\, ReLU(D_1)` with
        :math:`\alpha = D_2 / (2 D_2 + \sum_{ab} A\, D_3)`, zero where the denominator is.

        Args:
            d1, d2, d3: ``(B, C, h, w)`` first-order gradients and their squares and cubes (or
                estimates of them, e.g. averages over noisy inputs).
            activations: ``(B, C, h, w)`` the activations :math:`A` whose sum enters
                :math:`\alpha`.
        """
        import torch

        dims = _spatial(activations)
        denom = 2 * d2 + activations.sum(dims, keepdim=True) * d3
        nonzero = denom != 0
        alpha = torch.where(nonzero, d2 / torch.where(nonzero, denom, 1), 0)
        return (alpha * torch.relu(d1)).sum(dims)


class SmoothGradCAMppConfig(MethodConfig):
    num_samples: int = Field(4, gt=0, description="noisy copies of the input to average over")
    std: float = Field(
        0.3, ge=0, description="standard deviation of the Gaussian noise added to the input"
    )
    seed: int | None = Field(
        None, description="seed of the noise; the same seed gives the same map (None: random)"
    )


class SmoothGradCAMpp(GradCAMpp):
    r"""Smooth Grad-CAM++: Grad-CAM++ with derivatives averaged over noisy copies of the input.

    With :math:`g^{(m)}` the gradient at the layer for input :math:`X + \delta_m`,
    :math:`\delta_m \sim \mathcal{N}(0, \sigma^2)`, :math:`m = 1..n`, and
    :math:`D_p = \frac{1}{n} \sum_m (g^{(m)})^p`:

    .. math::

        w_k^{(c)} = \sum_{i,j} \alpha_k^{(c)}(i, j)\, ReLU\big(D_{1,k}(i, j)\big), \qquad
        \alpha_k^{(c)}(i, j) = \frac{D_{2,k}(i, j)}
            {2\, D_{2,k}(i, j) + \sum_{a,b} A_k(a, b)\, D_{3,k}(i, j)}

    where :math:`A` are the clean input's activations and the map is
    :math:`ReLU(\sum_k w_k A_k)` over them. The numerator of :math:`\alpha` is the averaged
    second-order term (the paper prints :math:`D_1` there, which breaks the reduction to
    Grad-CAM++ at zero noise).
    """

    name = "smoothgradcampp"
    summary = "Smooth Grad-CAM++: Grad-CAM++ with gradients averaged over noisy inputs"
    paper = (
        "Omeiza et al., Smooth Grad-CAM++: An Enhanced Inference Level Visualization Technique "
        "for Deep Convolutional Neural Network Models, arXiv:1908.01224, 2019"
    )
    aliases = ("smooth-grad-cam++", "smoothgradcam++")
    Config = SmoothGradCAMppConfig
    many_forwards = True

    def weights(self, ctx: Context) -> Tensor:
        import torch

        n, x = self.config.num_samples, ctx.inputs
        gen = ctx.generator(self.config.seed, x.device)
        noise = torch.randn((n, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
        grads = ctx.gradients_at((x + self.config.std * noise).flatten(0, 1))
        grads = grads.unflatten(0, (n, x.shape[0]))
        return self.plusplus_weights(
            grads.mean(0), (grads**2).mean(0), (grads**3).mean(0), ctx.activations
        )


class XGradCAM(Method):
    r"""XGrad-CAM: gradients averaged with the activations' own spatial weights.

    .. math::

        L^{(c)}_{XGrad-CAM}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big), \qquad
        w_k^{(c)} = \sum_{i,j} g_k(i, j) \frac{A_k(i, j)}{\sum_{m,n} A_k(m, n)}

    A channel whose activations sum to exactly zero gets weight zero.
    """

    name = "xgradcam"
    summary = "XGrad-CAM: gradients averaged with activation-proportional spatial weights"
    paper = (
        "Fu et al., Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of "
        "CNNs, BMVC 2020"
    )
    aliases = ("xgrad-cam",)
    needs_gradients = True

    def weights(self, ctx: Context) -> Tensor:
        import torch

        acts, dims = ctx.activations, _spatial(ctx.activations)
        total = acts.sum(dims)
        # Where the total is 0 the quotient is inf or NaN, and where() drops it.
        return torch.where(total != 0, (ctx.gradients * acts).sum(dims) / total, 0)


class LayerCAM(Method):
    r"""Layer-CAM: every activation weighted by its own positive gradient.

    .. math::

        L^{(c)}_{Layer-CAM}(x, y) = ReLU\Big(\sum_k ReLU\big(g_k(x, y)\big) A_k(x, y)\Big)

    With several target layers (the paper's hierarchical maps), the engine normalizes each
    layer's map, upsamples it to the input and fuses them by their element-wise maximum
    (:func:`camkit.fuse`).
    """

    name = "layercam"
    summary = "Layer-CAM: activations weighted pixel-wise by their positive gradients"
    paper = (
        "Jiang et al., LayerCAM: Exploring Hierarchical Class Activation Maps for "
        "Localization, IEEE TIP 2021"
    )
    aliases = ("layer-cam",)
    needs_gradients = True

    def weights(self, ctx: Context) -> Tensor:
        import torch

        return torch.relu(ctx.gradients)
