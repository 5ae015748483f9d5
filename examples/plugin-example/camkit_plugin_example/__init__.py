"""An example camkit plugin: Grad-CAM restricted to its top-k channels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:  # torch is imported when the method runs, not when camkit lists it
    from torch import Tensor


class TopKConfig(camkit.MethodConfig):
    k: int = camkit.Field(8, ge=1, description="how many channels keep their Grad-CAM weight")


class GradCAMTopK(camkit.Method):
    r"""Grad-CAM whose weights are zeroed outside the ``k`` largest of each image.

    .. math::

        \alpha_k = \frac{1}{h w} \sum_{i,j} \frac{\partial Y^{(c)}}{\partial A_k(i, j)},
        \qquad
        w_k = \begin{cases} \alpha_k & \text{if } \alpha_k \text{ is among the } k
              \text{ largest} \\ 0 & \text{otherwise} \end{cases}

    and :math:`L = ReLU(\sum_k w_k A_k)` (the engine forms the sum and applies the ReLU).
    """

    name = "gradcam-topk"
    summary = "Grad-CAM keeping only the k channels with the largest weights"
    paper = "Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks, ICCV 2017"
    Config = TopKConfig
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        import torch

        alpha = ctx.gradients.flatten(2).mean(-1)  # (B, C): the Grad-CAM weights
        top = alpha.topk(min(self.config.k, alpha.shape[1]), dim=1).indices
        return torch.zeros_like(alpha).scatter(1, top, alpha.gather(1, top))


@camkit.hookimpl
def camkit_methods() -> list[type[camkit.Method]]:
    return [GradCAMTopK]
