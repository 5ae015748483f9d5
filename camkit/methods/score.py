r"""Perturbation methods of the Score-CAM family: channel weights from the model's response to
the input masked by each channel.

Every method here masks the input with the layer's channels, min-max normalized each over its
own positions (a constant channel gives the all-zero mask):

.. math::

    \hat A_k = \frac{A_k - \min A_k}{\max A_k - \min A_k}

The engine's scoring service (:meth:`camkit.Context.score`) upsamples each mask bilinearly to
the input size (:math:`U`), multiplies it into its image and forwards the results in chunks of
the run option ``batch_size`` (at the run option ``precision``), scoring identical masks
once. :math:`Y^{(c)}(X)` is the target class's score (logit) for input :math:`X`, and
:math:`X_b` the explained input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from camkit.method import Context, Field, Method, MethodConfig, minmax_normalize

if TYPE_CHECKING:
    import torch
    from torch import Tensor


class SSCAMConfig(MethodConfig):
    num_samples: int = Field(35, gt=0, description="noisy copies of each mask to average over")
    std: float = Field(
        2.0, ge=0, description="standard deviation of the Gaussian noise added to each mask"
    )
    seed: int | None = Field(
        None, description="seed of the noise; the same seed gives the same map (None: random)"
    )


class ISCAMConfig(MethodConfig):
    num_samples: int = Field(10, gt=0, description="integration steps N")


def _mean_gain(
    ctx: Context,
    masks: Tensor,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``(B, C)``: the target score of each masked input minus the clean input's score,
    averaged over samples.

    Args:
        masks: ``(B, N, C, h, w)``: ``N`` samples of a mask per channel, at any resolution.
        noise_std, generator: the noise :meth:`Context.score` adds to each upsampled mask.
    """
    samples, channels = masks.shape[1:3]
    flat = masks.flatten(1, 2)
    scores = ctx.score(flat, noise_std=noise_std, generator=generator)
    scores = scores.unflatten(1, (samples, channels))
    return (scores - ctx.baseline_scores.reshape(-1, 1, 1)).mean(1)


class ScoreCAM(Method):
    r"""Score-CAM: channels weighted by how much their mask alone raises the target score.

    .. math::

        L^{(c)}_{Score-CAM}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big), \qquad
        w^{(c)} = softmax_k\Big(Y^{(c)}\big(U(\hat A_k) \odot X_b\big) - Y^{(c)}(X_b)\Big)
    """

    name = "scorecam"
    summary = "Score-CAM: channels weighted by the softmax of their masked-input score gains"
    paper = (
        "Wang et al., Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural "
        "Networks, CVPR Workshops 2020"
    )
    aliases = ("score-cam",)
    many_forwards = True

    def weights(self, ctx: Context) -> Tensor:
        import torch

        masks = minmax_normalize(ctx.activations, ctx.activations.dim() - 2)
        return torch.softmax(self.gains(ctx, masks), dim=1)

    def gains(self, ctx: Context, masks: Tensor) -> Tensor:
        """``(B, C)`` score gains of the ``(B, C, h, w)`` normalized channel masks."""
        return _mean_gain(ctx, masks.unsqueeze(1))


class SSCAM(ScoreCAM):
    r"""SS-CAM: Score-CAM with gains averaged over Gaussian-noised masks.

    .. math::

        w^{(c)} = softmax_k\Big(\frac{1}{N} \sum_{i=1}^N
            Y^{(c)}\big((U(\hat A_k) + \delta_{k,i}) \odot X_b\big) - Y^{(c)}(X_b)\Big),
        \qquad \delta_{k,i} \sim \mathcal{N}(0, \sigma^2)

    with independent noise per mask, sample and pixel of the upsampled mask. With
    :math:`\sigma = 0` it is Score-CAM.
    """

    name = "sscam"
    summary = "SS-CAM: Score-CAM with gains averaged over noisy masks"
    paper = (
        "Wang et al., SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization, "
        "arXiv:2006.14255, 2020"
    )
    aliases = ("ss-cam",)
    Config = SSCAMConfig

    def gains(self, ctx: Context, masks: Tensor) -> Tensor:
        samples = masks.unsqueeze(1).expand(-1, self.config.num_samples, *masks.shape[1:])
        generator = ctx.generator(self.config.seed, ctx.inputs.device)
        return _mean_gain(ctx, samples, noise_std=self.config.std, generator=generator)


class ISCAM(ScoreCAM):
    r"""IS-CAM: Score-CAM with gains averaged along an accumulated scaling of the masks.

    .. math::

        w^{(c)} = softmax_k\Big(\frac{1}{N} \sum_{i=1}^N Y^{(c)}(M_{k,i}) - Y^{(c)}(X_b)\Big),
        \qquad M_{k,i} = \sum_{j=0}^{i-1} \frac{j}{N}\, U(\hat A_k) \odot X_b
            = \frac{i (i - 1)}{2 N}\, U(\hat A_k) \odot X_b

    This is the accumulation exactly as the reference formula writes it: the first step
    :math:`M_{k,1}` is the all-zero input (forwarded once per image, as all its masks are
    identical) and the last scales the masked input by :math:`(N - 1) / 2`, beyond the
    input's range for :math:`N > 3`.
    """

    name = "iscam"
    summary = "IS-CAM: Score-CAM with gains averaged over accumulated mask scalings"
    paper = (
        "Naidu et al., IS-CAM: Integrated Score-CAM for axiomatic-based explanations, "
        "arXiv:2010.03023, 2020"
    )
    aliases = ("is-cam",)
    Config = ISCAMConfig

    def gains(self, ctx: Context, masks: Tensor) -> Tensor:
        import torch

        n = self.config.num_samples
        i = torch.arange(1, n + 1, dtype=masks.dtype, device=masks.device)
        scales = (i * (i - 1) / (2 * n)).reshape(1, n, *([1] * (masks.dim() - 1)))
        return _mean_gain(ctx, scales * masks.unsqueeze(1))
