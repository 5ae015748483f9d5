r"""Sanity checks: does the map change when the model's parameters are randomized?

An explanation that survives the destruction of what the model learned explains the image,
not the model. The *model-parameter randomization test* re-draws the parameters of the model
layer by layer, on a deep copy (the user's model is never touched), recomputes the maps with
the same targets and compares them to the original maps:

- *cascading*: layers are randomized cumulatively from the output towards the input (step
  :math:`k` has the last :math:`k` layers random);
- *independent*: one layer at a time, the others keep their trained values.

A parameter tensor :math:`\theta` is re-drawn from a normal distribution with its own mean
and standard deviation, truncated at two standard deviations (a constant tensor, e.g. a fresh
BatchNorm scale, keeps a spread of ``0.01``), so activations stay in a realistic range while
what was learned is gone. Buffers (BatchNorm's running statistics) are kept. The similarity
of maps before and after is the Spearman rank correlation and the SSIM (Wang et al. 2004,
Gaussian window of size 11 and :math:`\sigma = 1.5`, :math:`K_1 = 0.01`, :math:`K_2 = 0.03`,
maps in ``[0, 1]``): high similarity after randomization means the method fails the check.

Source: Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018, section 3.1.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from camkit.metrics.perturbation import gaussian_blur

Mode = Literal["cascading", "independent"]


def average_ranks(values: Tensor) -> Tensor:
    """``(B, N)`` 1-based ranks of each row of ``(B, ...)`` values, ties sharing their mean rank.

    Example:
        >>> average_ranks(torch.tensor([[0.5, 0.1, 0.5, 0.9]]))
        tensor([[2.5000, 1.0000, 2.5000, 4.0000]], dtype=torch.float64)
    """
    rows = values.flatten(1)
    ranks = torch.empty(rows.shape, dtype=torch.float64, device=rows.device)
    for i, row in enumerate(rows):
        ordered, order = row.sort(stable=True)
        _, group, counts = torch.unique_consecutive(
            ordered, return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()
        ranks[i, order] = (ends - (counts.double() - 1) / 2)[group]
    return ranks


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """``(B,)`` Spearman rank correlation of ``(B, ...)`` maps, row by row.

    The Pearson correlation of the average ranks; ``nan`` where a map is constant (its ranks
    carry no order).

    Example:
        >>> spearman(torch.tensor([[0.1, 0.2, 0.9]]), torch.tensor([[1.0, 3.0, 2.0]]))
        tensor([0.5000])
    """
    x = average_ranks(a)
    y = average_ranks(b)
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).float()


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0) -> Tensor:
    """``(B,)`` mean structural similarity of ``(B, H, W)`` maps.

    Local means, variances and covariance come from a Gaussian window (size 11,
    :math:`\\sigma = 1.5`, edges replicated); ``data_range`` is the maps' value range.

    Example:
        >>> m = torch.rand(1, 16, 16)
        >>> ssim(m, m)
        tensor([1.])
    """
    x = a.double()[:, None]
    y = b.double()[:, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def local(t: Tensor) -> Tensor:
        return gaussian_blur(t, sigma=1.5, kernel_size=11)

    mx, my = local(x), local(y)
    vx = local(x * x) - mx * mx
    vy = local(y * y) - my * my
    cov = local(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return index.flatten(1).mean(1).float()


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, from the output towards the input
    (reverse registration order), the default steps of :func:`model_randomization`.

    Example:
        >>> parameter_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)))
        ['2', '0']
    """
    owners = [name for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    return owners[::-1]


def randomize_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw every parameter of ``module`` (recursively) in place, as the module docstring
    says: truncated normal with the tensor's own mean and spread."""
    with torch.no_grad():
        for param in module.parameters():
            values = param.detach().double()
            mean = float(values.mean())
            spread = float(values.std()) if values.numel() > 1 else 0.0
            spread = spread if spread > 0 else 0.01
            fresh = torch.empty(param.shape, dtype=torch.float64)
            nn.init.trunc_normal_(
                fresh, mean, spread, mean - 2 * spread, mean + 2 * spread, generator=generator
            )
            param.copy_(fresh.to(param.device, param.dtype))


@dataclass(frozen=True)
class RandomizationResult:
    """Similarity of maps before and after each randomization step.

    Attributes:
        mode: ``"cascading"`` or ``"independent"``.
        layers: the layer randomized at each step (for cascading: the last one added).
        spearman: ``(S, B)`` Spearman rank correlation per step and image.
        ssim: ``(S, B)`` SSIM per step and image.
    """

    mode: Mode
    layers: list[str]
    spearman: Tensor
    ssim: Tensor


def model_randomization(
    model: nn.Module,
    explain: Callable[[nn.Module], Tensor],
    *,
    mode: Mode = "cascading",
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> RandomizationResult:
    """Adebayo et al.'s model-parameter randomization test, on a copy of ``model``.

    Args:
        model: the trained model; it is deep-copied, never modified.
        explain: ``explain(model) -> (B, H, W)`` maps in ``[0, 1]`` of a fixed batch with
            fixed targets (the trained model's), e.g.
            ``lambda m: camkit.create("gradcam", m, "layer4")(x, targets).maps``.
        mode: ``"cascading"`` or ``"independent"``.
        layers: names of the submodules to randomize, in step order (each step re-draws all
            parameters under its module); default :func:`parameter_layers` (output first).
        seed: seed of the re-drawn parameters.

    Returns:
        a :class:`RandomizationResult` with one row per layer.

    Raises:
        ValueError: for an unknown ``mode``, or a layer name the model does not have.

    Example:
        >>> model = camkit.testing.tiny_model()
        >>> x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
        >>> run = lambda m: camkit.create("gradcam", m, "features")(x, t).maps
        >>> model_randomization(model, run, mode="independent", layers=["fc"]).ssim.shape
        torch.Size([1, 2])
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"mode must be 'cascading' or 'independent', got {mode!r}")
    steps = list(parameter_layers(model) if layers is None else layers)
    modules = dict(model.named_modules())
    unknown = [name for name in steps if name not in modules]
    if unknown:
        raise ValueError(f"model has no submodule {unknown[0]!r} to randomize")
    original = explain(copy.deepcopy(model)).detach()
    generator = torch.Generator().manual_seed(seed)
    copy_ = copy.deepcopy(model)
    rho, structure = [], []
    for name in steps:
        if mode == "independent":
            copy_ = copy.deepcopy(model)
        randomize_(copy_.get_submodule(name), generator)
        after = explain(copy_).detach()
        rho.append(spearman(original, after))
        structure.append(ssim(original, after))
    empty = torch.zeros(0, original.shape[0])
    return RandomizationResult(
        mode,
        steps,
        torch.stack(rho) if rho else empty,
        torch.stack(structure) if structure else empty,
    )
