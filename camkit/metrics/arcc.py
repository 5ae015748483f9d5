r"""ARCC: one score from coherency, complexity and ROAD confidence.

For a map :math:`L` of image :math:`I` (``[0, 1]``, :math:`HW` pixels):

.. math::

    \mathrm{Coherency} = \frac{1 + \rho\big(L, \; E(L \circ I)\big)}{2}, \qquad
    \mathrm{Complexity} = \frac{\lVert L \rVert_1}{HW}, \qquad
    \mathrm{Confidence} = \operatorname{clip}\big(2 \, \mathrm{ROAD}_{combined}, 0, 1\big)

.. math::

    \mathrm{ARCC} = \frac{3}{\frac{1}{\mathrm{Coherency}} + \frac{1}{1 - \mathrm{Complexity}}
                    + \frac{1}{\mathrm{Confidence}}}

where :math:`E(L \circ I)` is the map the same method gives for the image multiplied by its
own map and :math:`\rho` the Pearson correlation: a coherent explanation explains its own
explanation the same way. Complexity favours sparse maps; the confidence part is the combined
ROAD score of :mod:`camkit.metrics.imputation` (:math:`\in [-\frac12, \frac12]` with softmax
probabilities) rescaled to ``[0, 1]``. The harmonic mean is high only when all three parts
are; each term's denominator gets :math:`10^{-8}` so a zero part gives a score near 0, not a
division error. Higher is better.

Sources: Poppi et al., *Revisiting the Evaluation of Class Activation Mapping for
Explainability: A Novel Metric and Experimental Analysis*, CVPR Workshops 2021 (ADCC:
coherency, complexity, average drop); ARCC replaces the average drop by ROAD (as
pytorch-grad-cam's ``ARCC`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from camkit.metrics.confidence import explanation_maps
from camkit.metrics.imputation import road_combined
from camkit.metrics.scores import ModelFn

#: Recomputes maps for other images: ``explain(images, targets)`` returns ``(B, H, W)`` maps
#: or a result with ``.maps`` (a camkit extractor qualifies).
Explainer = Callable[[Tensor, Tensor], object]

_EPS = 1e-8


def _maps_of(out: object) -> Tensor:
    maps = getattr(out, "maps", out)
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"explain must return (B, H, W) maps or a result with .maps, got {type(out).__name__}"
        )
    return maps


def complexity(maps: Tensor) -> Tensor:
    """``(B,)`` mean absolute value of each ``(B, H, W)`` map (lower is better).

    Example:
        >>> complexity(torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]))
        tensor([0.5000])
    """
    return maps.flatten(1).abs().float().mean(1)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """``(B,)`` Pearson correlation of ``(B, ...)`` tensors, row by row (0 for a constant row).

    Example:
        >>> pearson(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]])).round(
        ...     decimals=4
        ... )
        tensor([0.9934])
    """
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    spread = x.norm(dim=1) * y.norm(dim=1)
    return ((x * y).sum(1) / (spread + _EPS)).float()


def coherency(explain: Explainer, images: Tensor, maps: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` ``(1 + Pearson(L, E(L * I))) / 2``: the map against the map of the image
    multiplied by it (higher is better).

    Args:
        explain: ``explain(images, targets)``, e.g. the camkit extractor that made ``maps``.
        images: ``(B, C, H, W)`` images as the model takes them.
        maps: ``(B, H, W)`` maps in ``[0, 1]`` at the images' resolution.
        targets: ``(B,)`` class indices.

    Example:
        >>> cam = camkit.create("gradcam", camkit.testing.tiny_model(), "features")
        >>> x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        >>> coherency(cam, x, cam(x, t).maps, t).shape
        torch.Size([2])
    """
    again = _maps_of(explain(explanation_maps(images, maps), targets))
    return (pearson(again, maps) + 1) / 2


class ARCCScore(NamedTuple):
    """Per-image ARCC and its three parts, each ``(B,)`` float32."""

    arcc: Tensor
    coherency: Tensor
    complexity: Tensor
    confidence: Tensor


def arcc(
    model: ModelFn,
    explain: Explainer,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    removed: Sequence[float] = (0.2, 0.4, 0.6, 0.8),
    noise: float = 0.01,
    softmax: bool = True,
    generator: torch.Generator | None = None,
) -> ARCCScore:
    """Per-image ARCC with its coherency, complexity and confidence parts, on the CPU.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        explain: ``explain(images, targets)``, e.g. the camkit extractor that made ``maps``.
        images: ``(B, C, H, W)`` images as the model takes them.
        maps: ``(B, H, W)`` maps in ``[0, 1]`` at the images' resolution.
        targets: ``(B,)`` class indices.
        removed: ROAD's shares of removed pixels (see :func:`~camkit.metrics.imputation.road`).
        noise: ROAD's imputation noise.
        softmax: ROAD on softmax probabilities (the ``[0, 1]`` rescaling assumes them).
        generator: random source of ROAD's noise.

    Example:
        >>> model = camkit.testing.tiny_model()
        >>> cam = camkit.create("gradcam", model, "features")
        >>> x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        >>> arcc(model, cam, x, cam(x, t).maps, t).arcc.shape
        torch.Size([2])
    """
    # on the CPU, where ROAD's confidences are (the maps may be on an accelerator)
    coherent = coherency(explain, images, maps, targets).cpu()
    complex_ = complexity(maps).cpu()
    road = road_combined(
        model, images, maps, targets, removed=removed, noise=noise, softmax=softmax,
        generator=generator,
    )  # fmt: skip
    confidence = (2 * road).clamp(0, 1)
    inverse = 1 / (coherent + _EPS) + 1 / (1 - complex_ + _EPS) + 1 / (confidence + _EPS)
    return ARCCScore(3 / inverse, coherent, complex_, confidence)
