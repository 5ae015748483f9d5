"""Ablation-CAM: channel weights from the score lost when a channel is switched off."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from torch import Tensor


class AblationCAM(camkit.Method):
    r"""Ablation-CAM: each channel weighted by the relative score drop when it is zeroed.

    .. math::

        w_k^{(c)} = \frac{y^{(c)} - y^{(c)}_k}{y^{(c)}}, \qquad
        L^{(c)}_{Ablation-CAM}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big)

    where :math:`y^{(c)}` is the target score and :math:`y^{(c)}_k` the target score with
    channel :math:`k` of the layer set to zero. Needs one forward pass per channel and image,
    batched by the run option ``batch_size``, and no gradients. Dividing by :math:`y^{(c)}`
    only rescales the map (and flips it when the score is negative); when the score is exactly
    0 the undivided drop is used.
    """

    name = "ablationcam"
    summary = "Ablation-CAM: relative score drop when each channel is zeroed"
    paper = (
        "Ramaswamy & Desai, Ablation-CAM: Visual Explanations for Deep Convolutional Network "
        "via Gradient-free Localization, WACV 2020"
    )
    aliases = ("ablation-cam",)
    many_forwards = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        import torch

        batch, channels = ctx.activations.shape[:2]
        keep = 1 - torch.eye(channels, device=ctx.activations.device)
        ablated = ctx.score_layer(keep.expand(batch, channels, channels))
        score = ctx.baseline_scores.to(ablated.dtype).unsqueeze(1)
        return (score - ablated) / torch.where(score == 0, torch.ones_like(score), score)
