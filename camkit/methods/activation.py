"""Activation-based methods: weights read from the model, no gradients."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from camkit.errors import LayerError, TargetError
from camkit.method import Context, Field, Method, MethodConfig

if TYPE_CHECKING:
    from torch import Tensor, nn


class CAMConfig(MethodConfig):
    fc_layer: str | None = Field(
        None,
        description="the classifier whose weights give the channel weights; by default the "
        "model's last nn.Linear",
    )


class CAM(Method):
    r"""Class activation mapping from the classifier's weights.

    .. math:: L^{(c)}_{CAM}(x, y) = ReLU\Big(\sum_k w_k^{(c)} A_k(x, y)\Big)

    where :math:`w_k^{(c)}` is the weight of the fully connected classifier from unit
    :math:`k` to class :math:`c`. Applies to models with global pooling followed by one
    linear (or 1x1 convolution) classifier over the layer's channels.
    """

    name = "cam"
    summary = "Class activation mapping: classifier weights times activations"
    paper = "Zhou et al., Learning Deep Features for Discriminative Localization, CVPR 2016"
    Config = CAMConfig

    def __init__(self, config: MethodConfig | None = None) -> None:
        super().__init__(config)
        # The classifier found for each model, so a call does not walk the module tree.
        self._classifiers: weakref.WeakKeyDictionary[nn.Module, nn.Linear | nn.Conv2d] = (
            weakref.WeakKeyDictionary()
        )

    def weights(self, ctx: Context) -> Tensor:
        if min(ctx.targets.tolist()) < 0:
            raise TargetError("CAM needs class-index targets, not a callable")
        if ctx.prefix_tokens and self.config.fc_layer is None:
            raise LayerError(
                f"CAM cannot use layer {ctx.layer!r}: its {ctx.prefix_tokens} leading class or "
                "register token(s) say the head reads a class token (as ViT's does), not the "
                "average of the patch tokens that CAM's weights apply to; use a gradient method "
                "(gradcam, layercam), or pass fc_layer=... if the head does average the patches"
            )
        classifier = self._classifiers.get(ctx.model)
        if classifier is None:
            classifier = self._classifiers[ctx.model] = self._classifier(ctx)
        weight = classifier.weight.detach().flatten(1)
        channels = ctx.activations.shape[1]
        if weight.shape[1] != channels:
            self._classifier(ctx)  # raises, naming the classifier and the layer
        return weight.index_select(0, ctx.targets.to(weight.device))

    def _classifier(self, ctx: Context) -> nn.Linear | nn.Conv2d:
        from torch import nn

        channels = ctx.activations.shape[1]
        if self.config.fc_layer is not None:
            module = ctx.module(self.config.fc_layer)
            where = f"fc_layer {self.config.fc_layer!r}"
        else:
            linears = [m for m in ctx.model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise LayerError(
                    "CAM found no nn.Linear classifier in the model; pass fc_layer=..."
                )
            module, where = linears[-1], "the model's last nn.Linear"
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise LayerError(
                f"CAM's classifier ({where}) is {type(module).__name__}, not nn.Linear"
            )
        in_features = module.weight.flatten(1).shape[1]
        if in_features != channels:
            raise LayerError(
                f"CAM's classifier ({where}) takes {in_features} features but layer "
                f"{ctx.layer!r} has {channels} channels; CAM needs the layer right before "
                "global pooling and the classifier (pass fc_layer=... to choose the classifier)"
            )
        return module
