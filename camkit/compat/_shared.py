"""What both shims share: error types, eval-mode runs, camkit extractors."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

import camkit
from camkit.errors import CamkitError, MethodNotFoundError


class CompatTypeError(CamkitError, TypeError):
    """An argument of a shim has the wrong type (a ``TypeError``, as in the original)."""


def not_landed(library: str, name: str) -> type:
    """A placeholder class for ``library``'s method ``name`` that camkit does not provide yet.

    Instantiating it raises :class:`camkit.errors.MethodNotFoundError` naming what exists.

    Example:
        >>> FinerCAM = not_landed("torchcam", "FinerCAM")
        >>> FinerCAM(None)
        Traceback (most recent call last):
        ...
        camkit.errors.MethodNotFoundError: torchcam's FinerCAM has not landed in camkit yet...
    """

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        raise MethodNotFoundError(
            f"{library}'s {name} has not landed in camkit yet; camkit provides "
            f"{', '.join(camkit.list_methods())} (see docs/migrating.md)"
        )

    return type(name, (), {"__init__": __init__, "__doc__": f"Not in camkit yet: {name}."})


def contrib(name: str) -> ModuleType:
    """``camkit_contrib``, which the shim ``name`` is computed with, or a clear error.

    Example:
        >>> FinerTarget = contrib("FinerCAM").FinerTarget
    """
    try:
        return importlib.import_module("camkit_contrib")
    except ImportError as exc:
        raise MethodNotFoundError(
            f"{name} is computed by camkit-contrib, which is not installed: "
            "pip install ./plugins/camkit-contrib"
        ) from exc


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode and restore every module's training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def seed_from_global_rng() -> int:
    """A seed drawn from torch's global generator: ``torch.manual_seed`` makes shims that
    sample noise reproducible, as the originals are."""
    return int(torch.randint(0, 2**62, (1,)).item())


class _EpsilonConfig(camkit.MethodConfig):
    eps: float = camkit.Field(1e-8, ge=0)


class EpsilonXGradCAM(camkit.Method):
    r"""XGrad-CAM with the peers' additive epsilon: :math:`w_k = \sum g A / (\sum A + \epsilon)`.

    A private method on camkit's plugin contract (never registered), for ``legacy_numerics``:
    for channels whose activations sum to about :math:`-\epsilon` (untrained models' near-zero
    channels) the epsilon divides by almost zero, where camkit's ``xgradcam`` guards only
    exact zeros.
    """

    name = "xgradcam"
    Config = _EpsilonConfig
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        acts = ctx.activations
        dims = tuple(range(2, acts.dim()))
        return (ctx.gradients * acts).sum(dims) / (acts.sum(dims) + self.config.eps)


def extractor(
    method: str | camkit.Method,
    model: nn.Module,
    layers: Any,
    config: dict[str, Any],
    **options: Any,
) -> camkit.Extractor:
    """``camkit.create(method, model, layers, **options, **config)`` for a method name; a
    shim-private method instance (already configured) is bound by ``camkit.Extractor``, with
    the run options (``batch_size``, ...) of ``config`` and ``options``."""
    if isinstance(method, str):
        return camkit.create(method, model, layers, **options, **config)
    run = {k: v for k, v in {**config, **options}.items() if k in camkit.RunOptions.model_fields}
    return camkit.Extractor(method, model, layers, options=camkit.RunOptions(**run))
