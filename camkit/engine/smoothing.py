"""Smoothing run options that apply to every method: test-time augmentation (``aug_smooth``)
and the principal component of the weighted activations (``eigen_smooth``).

Both follow pytorch-grad-cam 1.5.7's options of the same names. ``aug_smooth`` explains six
copies of the input (without and with a horizontal flip, times the intensity factors 0.9, 1
and 1.1), maps each map back (a flipped copy's map is flipped again) and averages them.
``eigen_smooth`` replaces a layer's weighted sum ``sum_k w_k A_k`` by the projection of the
weighted activations ``w_k A_k`` on their first principal component.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache
from typing import Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from camkit.errors import ConfigError
from camkit.method import Method
from camkit.targets import Targets

#: The test-time augmentations: ``(horizontal flip, intensity factor)``, in the order their
#: maps are averaged.
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)


def augment(x: Tensor, flip: bool, factor: float) -> Tensor:
    """The input seen under one augmentation: flipped along its last (width) axis, scaled."""
    return (x.flip(-1) if flip else x) * factor


def deaugment(maps: Tensor, flip: bool) -> Tensor:
    """A map of an augmented input mapped back onto the input (the intensity factor moves no
    pixel)."""
    return maps.flip(-1) if flip else maps


def augmented_maps(run: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The mean of ``run``'s maps of the augmented inputs, each mapped back.

    ``run(x)`` returns ``(B, ...)`` maps whose last axis is the input's width (at any
    resolution). Each augmentation runs on its own, so a ``run`` that picks each image's
    predicted class picks it per augmentation (as pytorch-grad-cam does).

    Example:
        >>> cam = camkit.create("gradcam", model, "layer4")
        >>> smoothed = augmented_maps(lambda t: cam(t, targets).maps, x)  # (B, H, W)
    """
    maps = [deaugment(run(augment(x, flip, factor)), flip) for flip, factor in AUGMENTATIONS]
    return torch.stack(maps).mean(0)


class Explained(Protocol):
    """What an explanation carries that augmentation smoothing averages (``CAMResult``)."""

    maps: Tensor
    layer_maps: dict[str, Tensor]
    weights: dict[str, Tensor]
    targets: Tensor


R = TypeVar("R", bound=Explained)


def augmentation_smoothed(
    explain: Callable[[Tensor, Targets], R], x: Tensor, targets: Targets
) -> R:
    """``explain`` of the input, averaged over the augmentations (the ``aug_smooth`` option).

    The plain input is explained first; the targets it resolved (each image's predicted class
    when ``targets`` is None) are explained in every augmented copy, so all six maps show the
    same class. Maps, layer maps and weights are mapped back and averaged; scores and targets
    are the plain input's.
    """
    plain = explain(augment(x, False, 1.0), targets)
    chosen: Targets = targets if callable(targets) else plain.targets
    results = {
        (flip, factor): plain
        if (flip, factor) == (False, 1.0)
        else explain(augment(x, flip, factor), chosen)
        for flip, factor in AUGMENTATIONS
    }

    flips = [flip for flip, _ in results]

    def mean(tensors: list[Tensor], spatial: bool = True) -> Tensor:
        mapped = [deaugment(t, flip) if spatial else t for t, flip in zip(tensors, flips)]
        return torch.stack(mapped).mean(0)

    out = copy.copy(plain)
    out.maps = mean([r.maps for r in results.values()])
    out.layer_maps = {
        name: mean([r.layer_maps[name] for r in results.values()]) for name in plain.layer_maps
    }
    out.weights = {
        name: mean([r.weights[name] for r in results.values()], spatial=w.dim() > 2)
        for name, w in plain.weights.items()
    }
    return out


def principal_projection(weighted: Tensor) -> Tensor:
    """``(B, C, *spatial) -> (B, *spatial)``: each image's weighted activations, as rows
    ``(locations, C)`` centred per channel, projected on their first right-singular vector.

    The singular vector's sign is arbitrary; camkit picks the one whose loadings sum to a
    non-negative value, i.e. the projection that correlates positively with the unsmoothed
    map ``sum_k w_k A_k`` (pytorch-grad-cam keeps whichever sign its SVD returns). Computed in
    float64, returned in the input's dtype.
    """
    rows = weighted.flatten(2).transpose(1, 2).double()  # (B, N, C)
    rows = rows - rows.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    v = vh[:, 0, :]  # (B, C)
    v = v * torch.where(v.sum(1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
    projection = (rows @ v.unsqueeze(2)).squeeze(2)
    return projection.view(weighted.shape[0], *weighted.shape[2:]).to(weighted.dtype)


def check_eigen_smooth(enabled: bool, method: Method) -> None:
    """``eigen_smooth`` projects weighted channels: refuse it for methods without weights."""
    if enabled and method.computes_map():
        raise ConfigError(
            f"eigen_smooth needs a method that weights activation channels; "
            f"{method.name!r} computes its map directly"
        )


def eigen_map(weights: Tensor, activations: Tensor) -> Tensor:
    """The ``eigen_smooth`` map of a layer: :func:`principal_projection` of ``w_k A_k`` for
    channel weights ``(B, C)`` or pixel weights ``(B, C, *spatial)``."""
    w = weights.to(activations.dtype)
    if w.dim() == 2:
        w = w[(...,) + (None,) * (activations.dim() - 2)]
    return principal_projection(w * activations)


@lru_cache(maxsize=4)
def _gaussian(taps: int, sigma: float) -> Tensor:
    k = torch.exp(
        -((torch.arange(taps, dtype=torch.float64) - (taps - 1) / 2) ** 2) / (2 * sigma**2)
    )
    return (k / k.sum()).float()


def gaussian_blur(cam: Tensor, taps: int = 11, sigma: float = 5.0) -> Tensor:
    """A separable Gaussian blur of an ``(H, W)`` map, borders reflected without repeating the
    edge (``gfedcb|abcdefgh|gfedcba``)."""
    k = _gaussian(taps, sigma).to(cam.device)
    half = taps // 2
    out = cam[None, None]
    for axis in (2, 3):
        pad = (0, 0, half, half) if axis == 2 else (half, half, 0, 0)
        if out.shape[axis] <= half:  # too small to reflect: repeat the edge instead
            out = F.pad(out, pad, mode="replicate")
        else:
            out = F.pad(out, pad, mode="reflect")
        kernel = k.view(1, 1, -1, 1) if axis == 2 else k.view(1, 1, 1, -1)
        out = F.conv2d(out, kernel)
    return out[0, 0]
