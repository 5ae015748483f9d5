"""torchcam's activation-based extractors (CAM and the Score-CAM family), computed by camkit."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, seed_from_global_rng
from camkit.compat.torchcam.methods.core import _CAM, LayerArg
from camkit.errors import LayerError

__all__ = ["CAM", "ISCAM", "SSCAM", "ScoreCAM"]

logger = logging.getLogger(__name__)


class CAM(_CAM):
    r"""Class activation mapping (camkit's ``cam``): classifier weights times activations.

    .. math:: L^{(c)}_{CAM}(x, y) = \sum_k w_k^{(c)} A_k(x, y)

    As in torchcam, the map is not passed through a ReLU before normalization. The maps come
    from the forward pass the user ran (no second forward).

    Example:
        >>> from camkit.compat.torchcam.methods import CAM
        >>> with CAM(model, "layer4", "fc") as cam_extractor:
        ...     with torch.inference_mode():
        ...         out = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

    Args:
        model: input model
        target_layer: the target layer or its name (one layer)
        fc_layer: the fully connected classifier or its name (default: the model's only
            ``nn.Linear``)
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
    """

    _method = "cam"
    _from_recorded = True
    _targets_supported = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        fc_layer: nn.Module | str | None = None,
        input_shape: tuple[int, ...] = (3, 224, 224),
        **kwargs: Any,
    ) -> None:
        if isinstance(target_layer, list) and len(target_layer) > 1:
            raise LayerError("CAM takes one target layer, got a list of several")
        super().__init__(model, target_layer, input_shape, **kwargs)
        if isinstance(fc_layer, str):
            fc_name = fc_layer
        elif isinstance(fc_layer, nn.Module):
            fc_name = self._resolve_layer_name(fc_layer)
        elif fc_layer is None:
            linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
            if len(linears) != 1:
                raise LayerError(
                    f"unable to resolve `fc_layer` automatically: the model has {len(linears)} "
                    "nn.Linear layers; pass fc_layer=..."
                )
            fc_name = linears[0]
            logger.warning(f"no value was provided for `fc_layer`, thus set to '{fc_name}'.")
        else:
            raise CompatTypeError(f"invalid argument type for `fc_layer`: {type(fc_layer)}")
        self._fc_name = fc_name
        weight = getattr(self._submodule(fc_name, "fc_layer"), "weight", None)
        if not isinstance(weight, Tensor):
            raise LayerError(f"`fc_layer` {fc_name!r} has no weight tensor")
        self._fc_weights = weight.data.flatten(1)

    def _camkit_config(self) -> dict[str, Any]:
        return {"fc_layer": self._fc_name}

    def _placeholder_scores(self) -> Tensor:
        fmap = self.hook_a[0]
        assert fmap is not None
        return fmap.new_zeros(fmap.shape[0], self._fc_weights.shape[0])

    def _maps(self, result: camkit.CAMResult) -> list[Tensor]:
        # torchcam's CAM has no ReLU: the signed weighted sum of camkit's weights.
        maps = []
        for weights, fmap in zip(result.weights.values(), self.hook_a):
            assert fmap is not None
            w = weights.to(fmap.dtype)[(...,) + (None,) * (fmap.ndim - 2)]
            maps.append(torch.nansum(w * fmap, dim=1))
        return maps


class ScoreCAM(_CAM):
    r"""Score-CAM (camkit's ``scorecam``): channels weighted by the softmax of the score gains
    of the input masked by each normalized channel.

    .. math:: w^{(c)} = softmax_k\Big(Y^{(c)}\big(U(\hat A_k) \odot X_b\big) - Y^{(c)}(X_b)\Big)

    Example:
        >>> from camkit.compat.torchcam.methods import ScoreCAM
        >>> with ScoreCAM(model, "layer4") as cam_extractor:
        ...     with torch.inference_mode():
        ...         out = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

    Args:
        model: input model
        target_layer: the target layer(s) or their names
        batch_size: masked inputs forwarded at once
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
    """

    _method = "scorecam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        batch_size: int = 32,
        input_shape: tuple[int, ...] = (3, 224, 224),
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, input_shape, **kwargs)
        self.bs = batch_size

    def _camkit_config(self) -> dict[str, Any]:
        return {"batch_size": self.bs}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.bs})"


class SSCAM(ScoreCAM):
    r"""SS-CAM (camkit's ``sscam``): Score-CAM with gains averaged over noisy masks.

    The noise is seeded from torch's global generator, so ``torch.manual_seed`` makes a call
    reproducible; the draws are camkit's, not torchcam's.

    Example:
        >>> from camkit.compat.torchcam.methods import SSCAM
        >>> with SSCAM(model, "layer4", num_samples=2) as cam_extractor:
        ...     with torch.inference_mode():
        ...         out = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

    Args:
        model: input model
        target_layer: the target layer(s) or their names
        batch_size: masked inputs forwarded at once
        num_samples: noisy samples per mask
        std: standard deviation of the noise added to each normalized mask
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
    """

    _method = "sscam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        batch_size: int = 32,
        num_samples: int = 35,
        std: float = 2.0,
        input_shape: tuple[int, ...] = (3, 224, 224),
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, batch_size, input_shape, **kwargs)
        self.num_samples = num_samples
        self.std = std

    def _run_model(self, targets: Any) -> camkit.CAMResult:
        self._extractor = None  # a fresh seed for every call
        return super()._run_model(targets)

    def _camkit_config(self) -> dict[str, Any]:
        return {
            "batch_size": self.bs,
            "num_samples": self.num_samples,
            "std": self.std,
            "seed": seed_from_global_rng(),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.bs}, num_samples={self.num_samples}, "
            f"std={self.std})"
        )


class _LegacyISCAMConfig(camkit.MethodConfig):
    num_samples: int = camkit.Field(10, gt=0)


class _LegacyISCAM(camkit.Method):
    r"""torchcam 0.5.0's IS-CAM scales: :math:`\sum_{j=1}^{i} j / N = i (i + 1) / (2 N)`.

    A private method on camkit's plugin contract (never registered): the engine masks, scores
    and weights as for camkit's ``iscam``, only the scales differ.
    """

    name = "iscam"
    Config = _LegacyISCAMConfig
    many_forwards = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        acts, n = ctx.activations, self.config.num_samples
        masks = camkit.minmax_normalize(acts, acts.dim() - 2)
        i = torch.arange(1, n + 1, dtype=acts.dtype, device=acts.device)
        scales = (i * (i + 1) / (2 * n)).reshape(1, n, *([1] * (acts.dim() - 1)))
        scores = ctx.score((scales * masks.unsqueeze(1)).flatten(1, 2))
        gains = scores.unflatten(1, (n, acts.shape[1])) - ctx.baseline_scores.reshape(-1, 1, 1)
        return torch.softmax(gains.mean(1), dim=1)


class ISCAM(ScoreCAM):
    r"""IS-CAM (camkit's ``iscam``): Score-CAM with gains averaged over scaled masks.

    .. math:: M_{k,i} = \sum_{j=0}^{i-1} \frac{j}{N}\, U(\hat A_k) \odot X_b

    This is the formula torchcam documents; torchcam 0.5.0's code sums :math:`j = 1..i`
    instead (every scale one step larger, the first not zero); ``legacy_numerics=True``
    reproduces the code (see docs/migrating.md).

    Example:
        >>> from camkit.compat.torchcam.methods import ISCAM
        >>> with ISCAM(model, "layer4", num_samples=2) as cam_extractor:
        ...     with torch.inference_mode():
        ...         out = model(input_tensor)
        ...     cams = cam_extractor(class_idx=100)
        >>> cams[0].shape
        torch.Size([1, 2, 2])

    Args:
        model: input model
        target_layer: the target layer(s) or their names
        batch_size: masked inputs forwarded at once
        num_samples: integration steps
        input_shape: ``(C, H, W)`` used to locate the layer when none is given
        legacy_numerics: reproduce torchcam 0.5.0's scales
    """

    _method = "iscam"

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        batch_size: int = 32,
        num_samples: int = 10,
        input_shape: tuple[int, ...] = (3, 224, 224),
        legacy_numerics: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, target_layer, batch_size, input_shape, **kwargs)
        self.num_samples = num_samples
        self.legacy_numerics = legacy_numerics

    def _camkit_method(self, config: dict[str, Any]) -> str | camkit.Method:
        if self.legacy_numerics:
            return _LegacyISCAM(_LegacyISCAMConfig(num_samples=config["num_samples"]))
        return self._method

    def _camkit_config(self) -> dict[str, Any]:
        return {"batch_size": self.bs, "num_samples": self.num_samples}
