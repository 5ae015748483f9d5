"""KPCA-CAM: Eigen-CAM with the principal component taken in a kernel's feature space."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import camkit
from camkit_contrib.eigen import feature_rows, sign_by_channel_mean

if TYPE_CHECKING:
    from torch import Tensor

Kernel = Literal["linear", "poly", "rbf", "sigmoid", "cosine"]


def kernel_matrix(
    rows: Tensor, kernel: Kernel, gamma: float, *, degree: int = 3, coef0: float = 1.0
) -> Tensor:
    r"""The ``(B, N, N)`` Gram matrices of ``(B, N, C)`` rows under ``kernel``, less a constant.

    ``linear``: :math:`x^T y`; ``poly``: :math:`(\gamma x^T y + c_0)^d`; ``rbf``:
    :math:`\exp(-\gamma \lVert x - y \rVert^2)`; ``sigmoid``: :math:`\tanh(\gamma x^T y + c_0)`;
    ``cosine``: :math:`x^T y / (\lVert x \rVert \lVert y \rVert)` (0 for a zero row).
    Each is returned minus its value for orthogonal (``poly``, ``sigmoid``) or equal
    (``rbf``) rows, :math:`c_0^d`, :math:`\tanh c_0` or 1, computed without subtracting:
    a kernel PCA double-centres the matrix, which removes any constant, and for the small
    activations of untrained layers the variation would otherwise vanish below the
    constant's rounding.

    Example:
        >>> kernel_matrix(torch.randn(1, 5, 3), "rbf", 0.5).shape
        torch.Size([1, 5, 5])
    """
    import torch

    dot = rows @ rows.transpose(1, 2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        # a^d - c^d = (a - c) * sum_i a^i c^(d-1-i), with a - c = gamma * dot exactly
        shifted = gamma * dot + coef0
        return gamma * dot * sum(shifted**i * coef0 ** (degree - 1 - i) for i in range(degree))
    if kernel == "sigmoid":
        # tanh(x + c) - tanh(c) = sinh(x) / (cosh(x + c) cosh(c))
        x = gamma * dot
        return torch.sinh(x) / (torch.cosh(x + coef0) * math.cosh(coef0))
    if kernel == "rbf":
        return torch.expm1(-gamma * torch.cdist(rows, rows).square())
    norms = rows.norm(dim=-1, keepdim=True)
    unit = rows / torch.where(norms == 0, torch.ones_like(norms), norms)
    return unit @ unit.transpose(1, 2)


def kernel_first_component(features: Tensor, kernel: Kernel, gamma: float | None = None) -> Tensor:
    r"""Each location's coordinate along the first kernel principal component.

    The features of one image are ``N`` mean-centred rows (:func:`feature_rows`); their Gram
    matrix :math:`K` is double-centred, :math:`\tilde K = K - 1_N K - K 1_N + 1_N K 1_N`
    (:math:`1_N` the matrix of entries :math:`1/N`), and the coordinate of the rows along the
    first component is :math:`\sqrt{\lambda_1} \, \alpha_1` for the largest eigenvalue
    :math:`\lambda_1` of :math:`\tilde K` (negative ones count as 0) and its unit eigenvector
    :math:`\alpha_1`. The sign follows :func:`~camkit_contrib.eigen.sign_by_channel_mean`.

    Args:
        features: ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).
        kernel: see :func:`kernel_matrix`.
        gamma: the kernel's scale; ``None`` means ``1 / C``.

    Returns:
        ``(B, h, w)`` (or ``(B, t, h, w)``) projections in ``features``' dtype.

    Example:
        >>> kernel_first_component(torch.randn(2, 8, 4, 4), "sigmoid").shape
        torch.Size([2, 4, 4])
    """
    import torch

    # float64: the Gram matrix of h*w locations is ill-conditioned in float32
    rows = feature_rows(features, center=True).double()
    gram = kernel_matrix(rows, kernel, 1.0 / rows.shape[-1] if gamma is None else gamma)
    gram = (
        gram
        - gram.mean(1, keepdim=True)
        - gram.mean(2, keepdim=True)
        + gram.mean((1, 2), keepdim=True)
    )
    values, vectors = torch.linalg.eigh(gram)
    projection = vectors[..., -1] * values[..., -1:].clamp(min=0).sqrt()
    signed = sign_by_channel_mean(projection.float(), features)
    return signed.reshape(features.shape[0], *features.shape[2:]).to(features.dtype)


class KPCAConfig(camkit.MethodConfig):
    kernel: Kernel = camkit.Field("sigmoid", description="the kernel of the kernel PCA")
    gamma: float | None = camkit.Field(
        None, gt=0, description="kernel scale of poly, rbf and sigmoid; default 1 / channels"
    )


class KPCACAM(camkit.Method):
    r"""KPCA-CAM: the activations projected on their first kernel principal component.

    .. math::

        \tilde K = H K H, \quad K_{ij} = \kappa(a_i, a_j), \qquad
        \tilde K \alpha_1 = \lambda_1 \alpha_1, \qquad
        L_{KPCA-CAM}(i) = \sqrt{\lambda_1}\, \alpha_{1, i}

    where :math:`a_i` is the mean-centred ``C``-vector of activations at location :math:`i`,
    :math:`\kappa` the kernel (``kernel``: ``sigmoid`` :math:`\tanh(\gamma a^T b + 1)`,
    ``rbf``, ``poly`` of degree 3, ``linear``, ``cosine``; ``gamma`` defaults to
    :math:`1 / C`), :math:`H = I - 1_N` the centring matrix and :math:`\lambda_1` the largest
    eigenvalue. With the linear kernel it is Eigen-CAM with ``center=True``. As in Eigen-CAM,
    the map is signed (no ReLU) and the eigenvector's sign is chosen so the map correlates
    positively with the channel mean. Costs an ``(h w) \times (h w)`` eigendecomposition per
    image; class-agnostic.

    Example:
        >>> cam = camkit.create("kpcacam", camkit.testing.tiny_model(), "features", kernel="rbf")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "kpcacam"
    summary = "KPCA-CAM: projection of the activations on their first kernel principal component"
    paper = (
        "Karmani et al., KPCA-CAM: Visual Explainability of Deep Computer Vision Models using "
        "Kernel PCA, MMSP 2024"
    )
    aliases = ("kpca-cam",)
    Config = KPCAConfig
    relu = False

    def map(self, ctx: camkit.Context) -> Tensor:
        return kernel_first_component(ctx.activations, self.config.kernel, self.config.gamma)
