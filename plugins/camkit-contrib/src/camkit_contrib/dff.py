"""Deep Feature Factorization: a layer's activations factorized into concepts (NMF).

Not a CAM method: it has no target class and returns a map per concept, so it is a function
(:func:`deep_feature_factorization`) and a reusable object (:class:`DeepFeatureFactorization`)
returning a :class:`DFFResult`, not a registered method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import camkit
from camkit.errors import ConfigError, InputError, LayerError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

__all__ = ["DFFResult", "DeepFeatureFactorization", "deep_feature_factorization", "nmf"]


@dataclass
class DFFResult:
    """What Deep Feature Factorization returns.

    Attributes:
        concepts: ``(k, C)`` one vector per concept in the layer's channel space (the NMF
            basis plus each channel's minimum, which was subtracted before factorizing).
        maps: ``(B, k, H, W)`` float32 maps in ``[0, 1]``, each concept's coefficients per image
            min-max normalized and resized (bilinear) to the input.
        layer_maps: ``(B, k, h, w)`` the raw coefficients at the layer's resolution.
        concept_scores: ``(k, num_classes)`` the classifier's output for each concept vector
            (``None`` without a classifier); ``concept_scores.softmax(-1)`` gives the labels.
        reconstruction_error: ``||X - W H||_F / ||X||_F`` of the factorization.
        iterations: multiplicative-update iterations run.
        layer: the layer's name.
    """

    concepts: Tensor
    maps: Tensor
    layer_maps: Tensor
    concept_scores: Tensor | None
    reconstruction_error: float
    iterations: int
    layer: str


def nmf(
    x: Tensor,
    n_components: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-5,
    seed: int = 0,
    init: tuple[Tensor, Tensor] | None = None,
    eps: float = 1e-10,
) -> tuple[Tensor, Tensor, int]:
    r"""Non-negative matrix factorization :math:`X \approx W H` by multiplicative updates.

    Minimizes :math:`\|X - WH\|_F^2` over :math:`W, H \ge 0` with Lee & Seung's updates

    .. math::

        H \leftarrow H \odot \frac{W^\top X}{W^\top W H + \epsilon}, \qquad
        W \leftarrow W \odot \frac{X H^\top}{W H H^\top + \epsilon},

    from a random start scaled like scikit-learn's ``init="random"``
    (:math:`\sqrt{\bar X / k}\,|\mathcal{N}(0, 1)|`, seeded by ``seed``), or from ``init``.
    Every 10 iterations it stops when the error fell by less than ``tol`` times the initial
    error (scikit-learn's criterion for its ``"mu"`` solver).

    Args:
        x: ``(n, m)`` non-negative matrix.
        n_components: ``k``.
        init: ``(W, H)`` of shapes ``(n, k)`` and ``(k, m)`` to start from.

    Returns:
        ``W (n, k)``, ``H (k, m)`` and the number of iterations run.
    """
    import torch

    if init is None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        avg = (x.mean() / n_components).sqrt()
        w = avg * torch.randn(x.shape[0], n_components, generator=gen, device=x.device).abs()
        h = avg * torch.randn(n_components, x.shape[1], generator=gen, device=x.device).abs()
    else:
        w, h = (t.to(x.device, x.dtype).clone() for t in init)
    w, h = w.to(x.dtype), h.to(x.dtype)
    start = previous = torch.linalg.matrix_norm(x - w @ h)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        h = h * (w.T @ x) / ((w.T @ w) @ h + eps)
        w = w * (x @ h.T) / (w @ (h @ h.T) + eps)
        if tol > 0 and iterations % 10 == 0:
            error = torch.linalg.matrix_norm(x - w @ h)
            if float((previous - error) / start) < tol:
                break
            previous = error
    return w, h, iterations


class _Features(camkit.Method):
    """Captures the layer's activations through the engine (hooks, layouts, buffers)."""

    name = "dff-features"
    relu = False

    def __init__(self) -> None:
        super().__init__()
        self.captured: dict[str, Tensor] = {}

    def map(self, ctx: camkit.Context) -> Tensor:
        self.captured[ctx.layer] = ctx.activations.detach().clone()
        return ctx.activations.new_zeros(ctx.activations.shape[0], *ctx.activations.shape[2:])


class DeepFeatureFactorization:
    r"""Deep Feature Factorization: the activations :math:`A \in \mathbb{R}^{C \times (B h w)}`
    of a layer (every pixel of every image a column) factorized as :math:`A - a_{min} \approx
    W H` with :math:`W \in \mathbb{R}_{\ge 0}^{C \times k}` (the concepts) and
    :math:`H \in \mathbb{R}_{\ge 0}^{k \times B h w}` (a heatmap per concept and image).

    Concepts are shared by the whole batch, so the same concept gets the same index in every
    image. With a ``classifier`` (the model's head, e.g. ``model.fc``), each concept vector
    :math:`W_{:,j} + a_{min}` is scored as if it were a pooled feature vector.

    Paper: Collins, Achanta & Süsstrunk, *Deep Feature Factorization for Concept Discovery*,
    ECCV 2018.

    Args:
        model: the model (left as it was: no hooks after the call, buffers restored).
        layer: the layer, as for :func:`camkit.create` (name or module; ``None``: the last
            spatial layer, found on the first input).
        n_components: ``k``, the number of concepts.
        classifier: a callable mapping ``(k, C)`` concept vectors to ``(k, num_classes)`` scores.
        max_iter, tol, seed: the NMF solver's (see :func:`nmf`).

    Example:
        >>> dff = DeepFeatureFactorization(model, "layer4", n_components=4, classifier=model.fc)
        >>> res = dff(images)  # res.maps: (B, 4, H, W); res.concept_scores: (4, 1000)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Any = None,
        *,
        n_components: int = 5,
        classifier: Callable[[Tensor], Tensor] | None = None,
        max_iter: int = 1000,
        tol: float = 1e-5,
        seed: int = 0,
    ) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ConfigError(f"n_components must be a positive int, got {n_components!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ConfigError(f"max_iter must be a positive int, got {max_iter!r}")
        if classifier is not None and not callable(classifier):
            raise ConfigError(f"classifier must be callable, got {type(classifier).__name__}")
        self._features = _Features()
        self.extractor = camkit.Extractor(self._features, model, layer)
        self.n_components = n_components
        self.classifier = classifier
        self.max_iter, self.tol, self.seed = max_iter, float(tol), seed

    def __call__(self, x: Tensor) -> DFFResult:
        """Factorize the layer's activations on the batch ``x`` (``(B, C, H, W)`` images)."""
        import torch
        import torch.nn.functional as F

        self._features.captured.clear()
        res = self.extractor(x)
        layer = res.layers[0]
        acts = self._features.captured.pop(layer).float()
        if acts.dim() != 4:
            raise InputError(f"Deep Feature Factorization needs 2-D feature maps, got {acts.dim()}")
        if not bool(torch.isfinite(acts).all()):
            raise LayerError(f"layer {layer!r} produced NaN or Inf activations")
        batch, channels, h, w = acts.shape
        data = acts.transpose(0, 1).reshape(channels, -1)
        offset = data.amin(1, keepdim=True)
        data = data - offset
        k = self.n_components
        basis, coeffs, iterations = nmf(
            data, k, max_iter=self.max_iter, tol=self.tol, seed=self.seed
        )
        norm = torch.linalg.matrix_norm(data).clamp_min(torch.finfo(data.dtype).tiny)
        error = float(torch.linalg.matrix_norm(data - basis @ coeffs) / norm)
        layer_maps = coeffs.reshape(k, batch, h, w).transpose(0, 1)
        up = F.interpolate(
            camkit.minmax_normalize(layer_maps),
            size=tuple(x.shape[2:]),
            mode="bilinear",
            align_corners=False,
        )
        concepts = (basis + offset).T.contiguous()
        scores = None
        if self.classifier is not None:
            try:
                with torch.no_grad():
                    scores = self.classifier(concepts).detach()
            except Exception as exc:
                raise ConfigError(
                    f"the classifier failed on the {tuple(concepts.shape)} concept vectors of "
                    f"layer {layer!r} (one row per concept, the layer's channels as features): "
                    f"{exc}"
                ) from exc
        return DFFResult(
            concepts=concepts,
            maps=camkit.minmax_normalize(up).clamp_(0, 1),
            layer_maps=layer_maps.contiguous(),
            concept_scores=scores,
            reconstruction_error=error,
            iterations=iterations,
            layer=layer,
        )


def deep_feature_factorization(
    model: nn.Module,
    layer: Any,
    x: torch.Tensor,
    n_components: int = 5,
    classifier: Callable[[Tensor], Tensor] | None = None,
    **solver: Any,
) -> DFFResult:
    """One call of :class:`DeepFeatureFactorization` (``solver``: ``max_iter``, ``tol``, ``seed``).

    Example:
        >>> res = deep_feature_factorization(model, "layer4", images, 4, classifier=model.fc)
    """
    dff = DeepFeatureFactorization(
        model, layer, n_components=n_components, classifier=classifier, **solver
    )
    return dff(x)
