"""Principal-component methods: the map is the layer's dominant spatial pattern."""

from __future__ import annotations

import torch
from torch import Tensor

import camkit


def first_component(features: Tensor) -> Tensor:
    r"""Project each image's features onto their first right-singular vector.

    For one image, let :math:`M` be the ``(h * w, C)`` matrix of its features (one row per
    location) and :math:`M = U \Sigma V^T` its singular value decomposition. The result is
    :math:`M v_1`, the coordinate of every location along the dominant direction :math:`v_1`.
    Singular vectors are only defined up to sign; the sign is chosen so that the result
    correlates positively (Pearson) with the features' mean over channels.

    Args:
        features: ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).

    Returns:
        ``(B, h, w)`` projections (or ``(B, t, h, w)``), in ``features``' dtype.
    """
    batch, channels = features.shape[:2]
    rows = features.reshape(batch, channels, -1).transpose(1, 2).float()
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    projection = (rows @ vh[:, 0, :].unsqueeze(-1)).squeeze(-1)
    mean = rows.mean(-1)
    covariance = (
        (projection - projection.mean(-1, keepdim=True)) * (mean - mean.mean(-1, keepdim=True))
    ).sum(-1)
    sign = torch.where(covariance < 0, -1.0, 1.0).unsqueeze(-1)
    return (sign * projection).reshape(batch, *features.shape[2:]).to(features.dtype)


class EigenCAM(camkit.Method):
    r"""Eigen-CAM: the activations projected onto their first principal component.

    .. math::

        A = U \Sigma V^T, \qquad L_{Eigen-CAM} = A \, v_1

    where :math:`A` is the ``(h * w, C)`` matrix of one image's activations at the layer and
    :math:`v_1` the first column of :math:`V`. As in the paper, the activations are decomposed
    as they are (not mean-centred) and the map is the signed projection, without ReLU; the
    engine's min-max normalization maps it to ``[0, 1]``. The SVD fixes :math:`v_1` only up to
    sign, so the sign is chosen to make the map correlate positively with the activations'
    channel mean. The map is class-agnostic: the target does not change it.
    """

    name = "eigencam"
    summary = "Eigen-CAM: projection of the activations on their first principal component"
    paper = (
        "Muhammad & Yeasin, Eigen-CAM: Class Activation Map using Principal Components, IJCNN 2020"
    )
    aliases = ("eigen-cam",)
    relu = False

    def map(self, ctx: camkit.Context) -> Tensor:
        return first_component(ctx.activations)


class EigenGradCAM(camkit.Method):
    r"""Eigen-Grad-CAM: Eigen-CAM on the gradient-weighted activations.

    .. math::

        G = \Big(\frac{\partial Y^{(c)}}{\partial A} \odot A\Big) = U \Sigma V^T, \qquad
        L = G \, v_1

    where :math:`G` is the ``(h * w, C)`` matrix of one image's element-wise products of
    gradients and activations. Weighting by the gradient makes Eigen-CAM class-specific. The
    variant has no paper of its own: it is Eigen-CAM (Muhammad & Yeasin, 2020) applied to
    HiResCAM's products (Draelos & Carin, 2020). Sign and ReLU follow Eigen-CAM: the sign
    makes the map correlate positively with the products' channel mean, and there is no ReLU.
    """

    name = "eigengradcam"
    summary = "Eigen-Grad-CAM: first principal component of gradients times activations"
    paper = (
        "A variant of Eigen-CAM: Muhammad & Yeasin, Eigen-CAM: Class Activation Map using "
        "Principal Components, IJCNN 2020"
    )
    aliases = ("eigen-grad-cam",)
    needs_gradients = True
    relu = False

    def map(self, ctx: camkit.Context) -> Tensor:
        return first_component(ctx.gradients * ctx.activations)
