"""FEM: channels weighted by how often they fire far above their own average."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import camkit
from camkit.errors import LayerError

if TYPE_CHECKING:
    from torch import Tensor


class FEMConfig(camkit.MethodConfig):
    k: float = camkit.Field(
        2.0, description="a location counts when its activation exceeds mean + k * std"
    )


class FEM(camkit.Method):
    r"""FEM (Feature Explanation Method): the share of exceptional locations of each channel.

    .. math::

        \tau_k = \mu_k + k \, \sigma_k, \qquad
        w_k = \frac{1}{Z} \sum_{i, j} \mathbb{1}\big[A_k(i, j) > \tau_k\big], \qquad
        L_{FEM}(x, y) = ReLU\Big(\sum_k w_k A_k(x, y)\Big)

    where :math:`\mu_k` and :math:`\sigma_k` are the mean and (population) standard deviation
    of channel :math:`k` over its :math:`Z` locations: the "k-sigma rule" of the paper marks a
    location as exceptional for a channel, and a channel weighs as much as the share of its
    locations that are. Needs no gradients and no extra forward pass; the map does not depend
    on the target.

    Example:
        >>> cam = camkit.create("fem", camkit.testing.tiny_model(), "features", k=1.5)
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "fem"
    summary = "FEM: channels weighted by their share of locations above mean + k * std"
    paper = (
        "Fuad et al., Features Understanding in 3D CNNs for Actions Recognition in Video, IPTA 2020"
    )
    Config = FEMConfig

    def weights(self, ctx: camkit.Context) -> Tensor:
        grid = tuple(ctx.activations.shape[2:])
        locations = math.prod(grid)
        if self.config.k >= 0 and self.config.k**2 >= locations - 1:
            raise LayerError(
                f"fem with k={self.config.k} can mark no location of layer {ctx.layer!r}: its "
                f"{grid} grid has {locations} values per channel, and none of {locations} "
                f"values lies more than sqrt({locations} - 1) = {math.sqrt(locations - 1):.2f} "
                f"standard deviations above their mean; use k < {math.sqrt(locations - 1):.2f} "
                "or an earlier layer with a larger grid"
            )
        spatial = tuple(range(2, ctx.activations.dim()))
        acts = ctx.activations.float()
        mean = acts.mean(spatial, keepdim=True)
        std = acts.std(spatial, correction=0, keepdim=True)
        return (acts > mean + self.config.k * std).float().mean(spatial)
