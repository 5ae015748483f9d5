"""Finer-CAM and RefineCAM as named methods: a gradient method's weights, with Finer-CAM's
contrastive objective (:class:`~camkit_contrib.finer.FinerTarget`) or with the layers' maps
multiplied (:func:`~camkit_contrib.refine.refine`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import field_validator

import camkit
from camkit.errors import CamkitError, TargetError

if TYPE_CHECKING:
    from torch import Tensor

#: Methods that are themselves wrappers cannot be a base.
WRAPPERS = ("finercam", "refinecam")


def checked_base(name: str) -> str:
    """The canonical name of a gradient method that produces weights (a valid ``base``)."""
    try:
        info = camkit.method_info(name)
    except CamkitError as exc:
        raise ValueError(str(exc)) from None
    if info.name in WRAPPERS or not info.needs_gradients or info.cls.computes_map():
        raise ValueError(
            "base must be a gradient method that produces channel or pixel weights (e.g. "
            f"'gradcam', 'gradcampp', 'layercam'), got {name!r}"
        )
    return info.name


def _base_method(name: str) -> camkit.Method:
    info = camkit.method_info(name)
    return info.cls(info.config())


class BaseConfig(camkit.MethodConfig):
    base: str = "gradcam"

    @field_validator("base")
    @classmethod
    def _known_base(cls, name: str) -> str:
        return checked_base(name)


class FinerCAMConfig(BaseConfig):
    strength: float = 0.6
    num_references: int = camkit.Field(3, ge=1)
    weighting: Literal["mean", "softmax"] = "mean"


class FinerCAM(camkit.Method):
    r"""Finer-CAM: a gradient method's map of the contrast between the target class and the
    classes it is most easily confused with.

    With :math:`y` the logits, :math:`c` the target and :math:`d_1 .. d_T` the ``num_references``
    classes whose logits are closest to :math:`y_c`, the base method (``base``, Grad-CAM by
    default) explains

    .. math::

        s_{mean} = y_c - \gamma \frac{1}{T} \sum_t y_{d_t} \qquad\text{or}\qquad
        s_{softmax} = \frac{\sum_t p_{d_t} (y_c - \gamma\, y_{d_t})}{\sum_t p_{d_t} + 10^{-9}}

    (``weighting``; :math:`\gamma` is ``strength``). The defaults are torchcam's ``FinerCAM``
    (:math:`\gamma = 0.6`, mean); pytorch-grad-cam's is ``strength=1.0, weighting="softmax"``.
    ``targets`` are the classes :math:`c` (``None``: each image's top class), and the result's
    ``targets``. Same as passing
    ``targets=camkit_contrib.FinerTarget(...)`` to the base method.
    """

    name = "finercam"
    summary = "Finer-CAM: a gradient method's map of target minus its closest classes"
    paper = (
        "Zhang et al., Finer-CAM: Spotting the Difference Reveals Finer Details for Visual "
        "Explanation, CVPR 2025"
    )
    aliases = ("finer-cam",)
    Config = FinerCAMConfig
    needs_gradients = True

    def __init__(self, config: camkit.MethodConfig | None = None) -> None:
        super().__init__(config)
        self.base = _base_method(self.config.base)

    def objective(self, targets: Any) -> Any:
        import torch

        from camkit_contrib.finer import FinerTarget

        if callable(targets) and not isinstance(targets, torch.Tensor):
            raise TargetError(
                "finercam needs class-index targets (or None): it contrasts the target class "
                "with the classes closest to it, so a callable target cannot be used"
            )
        return FinerTarget(
            targets,
            num_references=self.config.num_references,
            strength=self.config.strength,
            weighting=self.config.weighting,
        )

    def weights(self, ctx: camkit.Context) -> Tensor:
        return self.base.weights(ctx)


class RefineCAMConfig(BaseConfig):
    base: str = "gradcampp"


class RefineCAM(camkit.Method):
    r"""RefineCAM: a gradient method's maps of several layers, fused by their product.

    .. math::

        L_{RefineCAM} = \mathcal{N}\Big(\prod_l U\big(\mathcal{N}(L_l)\big)\Big)

    with :math:`L_l` the base method's map at layer :math:`l` (``base``, Grad-CAM++ by
    default, as torchcam), :math:`\mathcal{N}` min-max normalization and :math:`U` bilinear
    resizing to the input. A location stays salient only where every layer agrees. Give it two
    or more layers (with one it is the base method); ``layer_maps`` are the base method's.
    Same as :func:`camkit_contrib.refine` on the base method's ``layer_maps``.
    """

    name = "refinecam"
    summary = "RefineCAM: product of a gradient method's normalized maps over layers"
    paper = "How to Evaluate and Refine your CAM, arXiv:2605.14641, 2026"
    aliases = ("refine-cam",)
    Config = RefineCAMConfig
    needs_gradients = True

    def __init__(self, config: camkit.MethodConfig | None = None) -> None:
        super().__init__(config)
        self.base = _base_method(self.config.base)

    def weights(self, ctx: camkit.Context) -> Tensor:
        return self.base.weights(ctx)

    def fuse(self, layer_maps: list[Tensor], size: tuple[int, ...]) -> Tensor | None:
        if len(layer_maps) == 1:
            return None  # one layer: the base method's map, fused as every method's
        from camkit_contrib.refine import refine

        return refine(layer_maps, size=size)
