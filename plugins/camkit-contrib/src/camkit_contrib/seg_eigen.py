"""Seg-Eigen-CAM: Eigen-CAM on absolute-gradient-weighted activations, sign by extremes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit
from camkit_contrib.eigen import principal_projection

if TYPE_CHECKING:
    from torch import Tensor


class SegEigenCAM(camkit.Method):
    r"""Seg-Eigen-CAM: the first principal component of :math:`|\nabla| \odot A`.

    .. math::

        G = \Big|\frac{\partial Y^{(c)}}{\partial A}\Big| \odot A, \qquad
        \bar G = G - \mathbf{1}\mu_G^T = U \Sigma V^T, \qquad
        p = \bar G v_1, \qquad
        L = ReLU\big(s \, p\big), \quad
        s = \begin{cases} -1 & |\min p| > |\max p| \\ 1 & \text{otherwise} \end{cases}

    where :math:`G` is the ``(h * w, C)`` matrix of one image's activations weighted by the
    absolute gradients (the paper's eq. 10: negative gradients count as evidence too),
    :math:`\mu_G` its per-channel spatial mean, and :math:`s` the paper's sign correction
    (eq. 13): the SVD's arbitrary sign is flipped when the projection's most extreme value is
    negative, so the dominant pattern comes out positive before the ReLU.

    Example:
        >>> cam = camkit.create("segeigencam", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "segeigencam"
    summary = "Seg-Eigen-CAM: principal component of |gradients| times activations"
    paper = (
        "Chung & Ying, Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for Semantic "
        "Segmentation Models, Applied Sciences 2025"
    )
    aliases = ("seg-eigen-cam",)
    needs_gradients = True

    def map(self, ctx: camkit.Context) -> Tensor:
        import torch

        weighted = ctx.gradients.abs() * ctx.activations
        projection = principal_projection(weighted, center=True)
        flip = projection.amin(-1).abs() > projection.amax(-1).abs()
        signed = torch.where(flip.unsqueeze(-1), -projection, projection)
        return signed.reshape(weighted.shape[0], *weighted.shape[2:]).to(weighted.dtype)
