"""The extractor: one method bound to one model and its target layers."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from camkit.engine.capture import Capture, grad_enabled, preserved_buffers
from camkit.engine.layer_scoring import LayerScorer
from camkit.engine.layers import LayerSpec, locate, resolve, resolve_all
from camkit.engine.maps import fuse, weighted_sum
from camkit.engine.outputs import Layout, check_layout, scores_of, to_channels_first
from camkit.engine.scoring import Scorer
from camkit.engine.targets import ResolvedTargets, Targets, resolve_targets
from camkit.errors import InputError, PluginError
from camkit.method import Context, Method


@dataclass
class CAMResult:
    """What one call of an extractor returns.

    Attributes:
        maps: ``(B, H, W)`` float32 maps in ``[0, 1]``, fused over layers and upsampled
            (bilinear) to the input size (``(B, T, H, W)`` for video, trilinear).
        layer_maps: ``{layer: (B, h, w)}`` maps after the method's ReLU, before normalization.
        weights: ``{layer: (B, C) or (B, C, h, w)}`` the weights the method produced (absent
            for methods that compute their map directly).
        scores: the model's clean scores, usually ``(B, num_classes)``.
        targets: ``(B,)`` long class indices explained (``-1`` under a callable target).
        method: the method's name.
    """

    maps: Tensor
    layer_maps: dict[str, Tensor]
    weights: dict[str, Tensor]
    scores: Tensor
    targets: Tensor
    method: str = ""
    layers: list[str] = field(default_factory=list)


class Extractor:
    """A CAM method bound to a model and its target layer(s); call it on a batch.

    Created by :func:`camkit.create`. The extractor holds no hooks between calls: each call
    attaches them, runs the model, and removes them, so extractors can share a model.
    """

    def __init__(
        self,
        method: Method,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        input_shape: Sequence[int] | None = None,
        layout: Layout = "auto",
        grid: tuple[int, int] | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        check_layout(layout, grid)
        self.method = method
        self.model = model
        self.layout: Layout = layout
        self.grid = grid
        self.progress = progress
        self._lock = threading.Lock()
        # Listed once, like the layers: walking the module tree on every call costs more
        # than a small model's forward pass.
        self._modules = list(model.modules())
        # The config is immutable; a missing attribute is slow to look up on pydantic models.
        self._batch_size = int(getattr(method.config, "batch_size", 32) or 32)
        self._precision = str(getattr(method.config, "precision", "fp32"))
        self._layers: list[tuple[str, nn.Module]] | None = None
        if layer is not None:
            self._layers = resolve_all(model, layer)
        elif input_shape is not None:
            param = next(model.parameters(), None)
            dummy = torch.zeros(
                (1, *input_shape), device=param.device if param is not None else None
            )
            with preserved_buffers(model):
                self._layers = [locate(model, dummy)]

    @property
    def layers(self) -> list[str] | None:
        """Names of the target layers (``None`` until located on the first input)."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def __repr__(self) -> str:
        return f"Extractor(method={self.method.name!r}, layers={self.layers!r})"

    def __call__(self, x: Tensor, targets: Targets = None) -> CAMResult:
        """Explain ``x`` for ``targets``.

        Args:
            x: ``(B, C, H, W)`` images (or ``(B, C, T, H, W)`` videos), finite floats on the
                model's device.
            targets: ``None`` (each image's predicted class), an int, a list or 1-D tensor of
                ``B`` ints, or a callable ``fn(scores) -> (B,)`` (optionally
                ``fn(scores, index)``, see :mod:`camkit.targets`).
        """
        x = _validated_input(x, self.model)
        layers = self._layers_for(x)
        method = self.method
        with preserved_buffers(self.model, self._modules):
            capture = Capture(layers, gradients=method.needs_gradients)
            if method.needs_gradients:
                with grad_enabled():
                    x_in = x.clone() if x.is_inference() else x
                    with capture:
                        raw = scores_of(self.model(x_in))
                    capture.check_ran()
                    chosen = resolve_targets(targets, raw.detach())
                    batch_index = torch.arange(x.shape[0], device=raw.device)
                    gradients = capture.grad(chosen.score(raw, batch_index).sum())
            else:
                with torch.inference_mode(), capture:
                    raw = scores_of(self.model(x))
                capture.check_ran()
                chosen = resolve_targets(targets, raw)
                gradients = {}
            scores = raw.detach()
            layer_maps, weights = {}, {}
            for name, _ in layers:
                ctx = self._context(name, x, capture, gradients, scores, chosen)
                layer_maps[name], w = self._map(ctx)
                if w is not None:
                    weights[name] = w
        maps = fuse(list(layer_maps.values()), size=x.shape[2:])
        return CAMResult(
            maps=maps,
            layer_maps=layer_maps,
            weights=weights,
            scores=scores,
            targets=chosen.indices,
            method=method.name,
            layers=[name for name, _ in layers],
        )

    # -- steps ----------------------------------------------------------------------------

    def _layers_for(self, x: Tensor) -> list[tuple[str, nn.Module]]:
        if self._layers is None:
            with self._lock:
                if self._layers is None:
                    with preserved_buffers(self.model, self._modules):
                        self._layers = [locate(self.model, x)]
        return self._layers

    def _features(self, t: Tensor, x: Tensor, layer: str) -> Tensor:
        return to_channels_first(t, self.layout, self.grid, x.shape[2:], layer)

    def _context(
        self,
        name: str,
        x: Tensor,
        capture: Capture,
        gradients: dict[str, Tensor],
        scores: Tensor,
        chosen: ResolvedTargets,
    ) -> Context:
        batch_size = self._batch_size
        batch_index = torch.arange(x.shape[0], device=scores.device)
        scorer = Scorer(
            self.model,
            x,
            chosen.score,
            batch_size=batch_size,
            progress=self.progress,
            desc=f"{self.method.name} {name}",
            precision=self._precision,
        )
        grad = gradients.get(name)
        activations = self._features(capture.activations[name].detach(), x, name)
        layer_scorer = LayerScorer(
            self.model,
            x,
            (name, dict(capture.layers)[name]),
            activations.shape[1],
            lambda t: self._features(t, x, name),
            chosen.score,
            batch_size=batch_size,
            progress=self.progress,
            desc=f"{self.method.name} {name}",
        )
        return Context(
            layer=name,
            activations=activations,
            gradients=None if grad is None else self._features(grad, x, name),
            inputs=x,
            targets=chosen.indices,
            scores=scores,
            baseline_scores=chosen.score(scores, batch_index).detach(),
            model=self.model,
            _score=scorer,
            _gradients_at=lambda inputs: self._gradients_at(name, inputs, chosen, batch_size),
            _module=lambda module_name: resolve(self.model, module_name)[1],
            _batch_size=batch_size,
            _score_layer=layer_scorer,
        )

    def _map(self, ctx: Context) -> tuple[Tensor, Tensor | None]:
        method = self.method
        if method.computes_map():
            cam, weights = method.map(ctx), None
        else:
            weights = method.weights(ctx)
            acts = ctx.activations
            if not isinstance(weights, Tensor) or tuple(weights.shape) not in (
                tuple(acts.shape[:2]),
                tuple(acts.shape),
            ):
                got = (
                    tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
                )
                raise PluginError(
                    f"method {method.name!r} returned weights of shape {got} for layer "
                    f"{ctx.layer!r}; expected {tuple(acts.shape[:2])} or {tuple(acts.shape)}"
                )
            cam = weighted_sum(weights, acts)
            weights = weights.detach()
        if tuple(cam.shape) != (ctx.activations.shape[0], *ctx.activations.shape[2:]):
            raise PluginError(
                f"method {method.name!r} returned a map of shape {tuple(cam.shape)} for layer "
                f"{ctx.layer!r}; expected {(ctx.activations.shape[0], *ctx.activations.shape[2:])}"
            )
        if method.relu:
            cam = torch.relu(cam)
        cam = cam.detach().float()
        if not _all_finite(cam):
            raise PluginError(
                f"method {method.name!r} produced non-finite values for layer {ctx.layer!r}"
            )
        return cam, weights

    def _gradients_at(
        self, name: str, inputs: Tensor, chosen: ResolvedTargets, batch_size: int
    ) -> Tensor:
        layers = [(n, m) for n, m in self._layers or [] if n == name]
        batch = chosen.indices.shape[0]
        if inputs.shape[0] % batch:
            raise InputError(
                f"gradients_at() needs a multiple of the batch size {batch} inputs, "
                f"got {inputs.shape[0]}"
            )
        parts = []
        for start in range(0, inputs.shape[0], batch_size):
            chunk = inputs[start : start + batch_size].detach()
            index = torch.arange(start, start + chunk.shape[0], device=chunk.device) % batch
            capture = Capture(layers, gradients=True)
            with grad_enabled():
                with capture:
                    out = scores_of(self.model(chunk))
                capture.check_ran()
                grad = capture.grad(chosen.score(out, index).sum())[name]
            parts.append(self._features(grad, chunk, name))
        return torch.cat(parts)


def _validated_input(x: object, model: nn.Module) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputError(f"the input must be a torch.Tensor, not {type(x).__name__}")
    if x.dim() == 3:
        raise InputError(
            f"the input has shape {tuple(x.shape)}: one image without a batch dimension; "
            "pass x.unsqueeze(0)"
        )
    if x.dim() not in (4, 5):
        raise InputError(
            f"the input must be (B, C, H, W) images or (B, C, T, H, W) videos, got shape "
            f"{tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise InputError(
            f"the input must be floating point, got {x.dtype}; convert with x.float() "
            "(and scale to the range the model was trained on)"
        )
    if x.shape[0] == 0 or x.numel() == 0:
        raise InputError(f"the input is empty: shape {tuple(x.shape)}")
    if not _all_finite(x):
        raise InputError("the input contains NaN or Inf values")
    param = next(model.parameters(), None)
    if param is not None and param.device != x.device:
        raise InputError(
            f"the input is on {x.device} but the model is on {param.device}; move one of them"
        )
    return x.detach()


def _all_finite(t: Tensor) -> bool:
    # A finite sum proves every element finite (one Inf or NaN makes the sum Inf or NaN), at
    # a fraction of the cost of an element-wise check, which only an overflowing sum needs.
    t = t.detach()
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())
