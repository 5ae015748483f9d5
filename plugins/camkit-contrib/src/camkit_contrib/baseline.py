"""Baselines: methods that explain nothing, to check that metrics can tell."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from torch import Tensor


class RandomConfig(camkit.MethodConfig):
    seed: int | None = camkit.Field(
        0, description="seed of the random weights; None draws fresh weights on every call"
    )


class RandomCAM(camkit.Method):
    r"""Random-CAM: activations weighted by random numbers.

    .. math::

        w_k \sim \mathcal{U}[-1, 1] \text{ i.i.d. per image and channel}, \qquad
        L(x, y) = ReLU\Big(\sum_k w_k A_k(x, y)\Big)

    A sanity baseline in the spirit of Adebayo et al.: an evaluation metric that scores it
    like a real method does not measure the explanation. The weights of a batch are drawn in
    one ``(B, C)`` draw from a generator seeded with ``seed``, so a seeded call is
    reproducible.
    """

    name = "randomcam"
    summary = "Random-CAM: random channel weights in [-1, 1], a sanity baseline"
    paper = (
        "Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018 (the baseline's motivation)"
    )
    aliases = ("random-cam",)
    Config = RandomConfig

    def weights(self, ctx: camkit.Context) -> Tensor:
        import torch

        batch, channels = ctx.activations.shape[:2]
        uniform = torch.rand(batch, channels, generator=ctx.generator(self.config.seed))
        return (2 * uniform - 1).to(ctx.activations.device, ctx.activations.dtype)
