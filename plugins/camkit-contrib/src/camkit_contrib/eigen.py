"""Principal-component methods: the map is the layer's dominant spatial pattern."""

from __future__ import annotations

from typing import TYPE_CHECKING

import camkit

if TYPE_CHECKING:
    from torch import Tensor


def feature_rows(features: Tensor, *, center: bool) -> Tensor:
    """``(B, C, *spatial)`` features as ``(B, N, C)`` float32 rows, one per location.

    With ``center`` each channel's mean over the locations is subtracted, so the rows are
    the deviations that a principal component analysis decomposes.
    """
    batch, channels = features.shape[:2]
    rows = features.reshape(batch, channels, -1).transpose(1, 2).float()
    return rows - rows.mean(1, keepdim=True) if center else rows


def principal_projection(features: Tensor, *, center: bool) -> Tensor:
    r"""Each location's coordinate along the first right-singular vector, sign as it comes.

    For one image, :math:`M` is the ``(N, C)`` matrix of :func:`feature_rows` and
    :math:`M = U \Sigma V^T`; the result is :math:`M v_1`. The SVD fixes :math:`v_1` only up
    to sign, so callers choose the sign.

    Args:
        features: ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).
        center: subtract each channel's spatial mean before the decomposition.

    Returns:
        ``(B, N)`` float32 projections, ``N = h * w``.

    Example:
        >>> principal_projection(torch.randn(2, 8, 4, 4), center=True).shape
        torch.Size([2, 16])
    """
    import torch

    rows = feature_rows(features, center=center)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    return (rows @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)


def sign_by_channel_mean(projection: Tensor, features: Tensor) -> Tensor:
    """``(B, N)`` projections flipped where they correlate negatively (Pearson) with the
    ``(B, C, *spatial)`` features' mean over channels, so salient locations come out high."""
    import torch

    batch, channels = features.shape[:2]
    mean = features.reshape(batch, channels, -1).float().mean(1)
    covariance = (
        (projection - projection.mean(-1, keepdim=True)) * (mean - mean.mean(-1, keepdim=True))
    ).sum(-1)
    return torch.where(covariance < 0, -1.0, 1.0).unsqueeze(-1) * projection


def first_component(features: Tensor, *, center: bool = False) -> Tensor:
    r"""Project each image's features onto their first right-singular vector.

    For one image, let :math:`M` be the ``(h * w, C)`` matrix of its features (one row per
    location), mean-centred per channel when ``center``, and :math:`M = U \Sigma V^T` its
    singular value decomposition. The result is :math:`M v_1`, the coordinate of every
    location along the dominant direction :math:`v_1`. Singular vectors are only defined up
    to sign; the sign is chosen so that the result correlates positively (Pearson) with the
    features' mean over channels.

    Args:
        features: ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).
        center: subtract each channel's spatial mean first (a principal component analysis)
            rather than decompose the raw features.

    Returns:
        ``(B, h, w)`` projections (or ``(B, t, h, w)``), in ``features``' dtype.

    Example:
        >>> first_component(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 4, 4])
    """
    projection = sign_by_channel_mean(principal_projection(features, center=center), features)
    return projection.reshape(features.shape[0], *features.shape[2:]).to(features.dtype)


class EigenConfig(camkit.MethodConfig):
    center: bool = camkit.Field(
        False,
        description=(
            "subtract each channel's spatial mean before the SVD (a PCA, as pytorch-grad-cam "
            "does) instead of decomposing the raw activations (as the Eigen-CAM paper does)"
        ),
    )


class EigenCAM(camkit.Method):
    r"""Eigen-CAM: the activations projected onto their first principal component.

    .. math::

        A = U \Sigma V^T, \qquad L_{Eigen-CAM} = A \, v_1

    where :math:`A` is the ``(h * w, C)`` matrix of one image's activations at the layer and
    :math:`v_1` the first column of :math:`V`. By default, as the paper writes it (section 3:
    the SVD of the activation matrix itself), the activations are decomposed as they are; with
    ``center=True`` each channel's spatial mean is subtracted first, which makes :math:`v_1`
    the first principal component in the statistical sense the paper's title uses and is what
    pytorch-grad-cam computes. The map is the signed projection, without ReLU; the engine's
    min-max normalization maps it to ``[0, 1]``. The SVD fixes :math:`v_1` only up to sign,
    so the sign is chosen to make the map correlate positively with the activations' channel
    mean. The map is class-agnostic: the target does not change it.

    Example:
        >>> cam = camkit.create("eigencam", camkit.testing.tiny_model(), "features", center=True)
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "eigencam"
    summary = "Eigen-CAM: projection of the activations on their first principal component"
    paper = (
        "Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, IJCNN 2020"
    )
    aliases = ("eigen-cam",)
    Config = EigenConfig
    relu = False

    def map(self, ctx: camkit.Context) -> Tensor:
        return first_component(ctx.activations, center=self.config.center)


class EigenGradCAM(camkit.Method):
    r"""Eigen-Grad-CAM: Eigen-CAM on the gradient-weighted activations.

    .. math::

        G = \Big(\frac{\partial Y^{(c)}}{\partial A} \odot A\Big) = U \Sigma V^T, \qquad
        L = G \, v_1

    where :math:`G` is the ``(h * w, C)`` matrix of one image's element-wise products of
    gradients and activations (mean-centred per channel with ``center=True``, as
    pytorch-grad-cam does). Weighting by the gradient makes Eigen-CAM class-specific. The
    variant has no paper of its own: it is Eigen-CAM (Muhammad & Yeasin, 2020) applied to
    HiResCAM's products (Draelos & Carin, 2020). Sign and ReLU follow Eigen-CAM: the sign
    makes the map correlate positively with the products' channel mean, and there is no ReLU.

    Example:
        >>> cam = camkit.create("eigengradcam", camkit.testing.tiny_model(), "features")
        >>> cam(camkit.testing.tiny_inputs(1)).maps.shape
        torch.Size([1, 16, 16])
    """

    name = "eigengradcam"
    summary = "Eigen-Grad-CAM: first principal component of gradients times activations"
    paper = (
        "A variant of Eigen-CAM: Muhammad & Yeasin, Eigen-CAM: Class Activation Map using "
        "Principal Components, IJCNN 2020"
    )
    aliases = ("eigen-grad-cam",)
    Config = EigenConfig
    needs_gradients = True
    relu = False

    def map(self, ctx: camkit.Context) -> Tensor:
        return first_component(ctx.gradients * ctx.activations, center=self.config.center)
