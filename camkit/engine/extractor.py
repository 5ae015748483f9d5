"""The extractor: one method bound to one model and its target layers."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from camkit.engine.accel import accelerator
from camkit.engine.capture import Capture, check_gradients, grad_enabled, preserved_buffers
from camkit.engine.layer_scoring import LayerScorer
from camkit.engine.layers import LayerSpec, locate, resolve, resolve_all
from camkit.engine.maps import fuse, weighted_sum
from camkit.engine.outputs import Layout, check_layout, scores_of, to_channels_first
from camkit.engine.scoring import Scorer
from camkit.engine.targets import ResolvedTargets, Targets, check_scores, resolve_targets
from camkit.errors import CamkitError, InputError, PluginError
from camkit.method import Context, Method

NON_FINITE_INPUT = "the input contains NaN or Inf values"


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
        channels_last: bool | None = None,
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
        # Only modules with buffers of their own can change state in train mode.
        self._buffered = [m for m in self._modules if m._buffers]
        self._channels_last_option = channels_last  # also the scoring service's layout
        self._resolved: dict[str, nn.Module] = {}
        # The config is immutable; a missing attribute is slow to look up on pydantic models.
        self._batch_size = int(getattr(method.config, "batch_size", 32) or 32)
        self._precision = str(getattr(method.config, "precision", "fp32"))
        self._accel = accelerator(model, precision=self._precision, channels_last=channels_last)
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
        x = _validated_input(x, self._modules)
        layers = self._layers_for(x)
        method = self.method
        with preserved_buffers(self.model, self._buffered):
            capture = Capture(layers, gradients=method.needs_gradients)
            if method.needs_gradients:
                with grad_enabled():
                    x_in = x.clone() if x.is_inference() else x
                    with capture:
                        raw = scores_of(self._forward(x_in, capture))
                    capture.check_ran()
                    chosen = resolve_targets(targets, raw.detach())
                    target = chosen.raw(raw, None)
            else:
                with torch.inference_mode(), capture:
                    raw = scores_of(self._forward(x, capture))
                capture.check_ran()
                chosen = resolve_targets(targets, raw)
                target = chosen.raw(raw, None)
            scores = raw.detach()
            call = _Call(method, x, capture, scores, chosen, target)
            layer_maps, weights = {}, {}
            for name, _ in layers:
                ctx = self._context(name, x, call)
                layer_maps[name], w = self._map(ctx, call)
                if w is not None:
                    weights[name] = w
            call.check(layer_maps)
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
                    with preserved_buffers(self.model, self._buffered):
                        self._layers = [locate(self.model, x)]
        return self._layers

    def _forward(self, x: Tensor, capture: Capture) -> object:
        if not self._accel.explain_channels_last(x):
            return self._checked_forward(x, x)
        try:
            return self._checked_forward(x.contiguous(memory_format=torch.channels_last), x)
        except CamkitError:
            raise
        except RuntimeError:
            # The model may need contiguous inputs (e.g. it calls .view on its features): run
            # it as given, and keep to that once that works.
            capture.restart()
            out = self._checked_forward(x, x)
            self._accel.rejected_channels_last()
            return out

    def _checked_forward(self, x_in: Tensor, x: Tensor) -> object:
        try:
            return self.model(x_in)
        except CamkitError:
            raise
        except Exception as exc:
            if not _all_finite(x):  # a model may fail on NaN: say so
                raise InputError(NON_FINITE_INPUT) from exc
            raise

    def _view(self, t: Tensor, x: Tensor, layer: str) -> Tensor:
        """``(B, C, h, w)`` view of a layer output (sharing its storage where one exists)."""
        return to_channels_first(t, self.layout, self.grid, x.shape[2:], layer)

    def _features(self, t: Tensor, x: Tensor, layer: str) -> Tensor:
        # Contiguous whatever layout the forward ran in (a no-op when it already is).
        return self._view(t, x, layer).contiguous()

    def _context(self, name: str, x: Tensor, call: _Call) -> Context:
        # The services are built on first use: most methods use none of them, and a call's
        # fixed cost matters for small models.
        batch_size, chosen, desc = self._batch_size, call.chosen, f"{self.method.name} {name}"
        output = call.capture.activations[name].detach()
        activations = self._features(output, x, name)
        module = dict(call.capture.layers)[name]
        # Token layers: the leading tokens that are not part of the grid (class, register).
        prefix = output.shape[1] - activations[0, 0].numel() if output.dim() == 3 else 0

        def score(
            masks: Tensor, *, noise_std: float = 0.0, generator: torch.Generator | None = None
        ) -> Tensor:
            call.check_inputs()
            scorer = Scorer(
                self.model,
                x,
                chosen.score,
                batch_size=batch_size,
                progress=self.progress,
                desc=desc,
                precision=self._precision,
                channels_last=self._channels_last_option,
            )
            return scorer(masks, noise_std=noise_std, generator=generator)

        def score_layer(masks: Tensor) -> Tensor:
            call.check_inputs()
            scorer = LayerScorer(
                self.model,
                x,
                (name, module),
                activations.shape[1],
                lambda t: self._view(t, x, name),  # masked in place: a view, never a copy
                chosen.score,
                batch_size=batch_size,
                progress=self.progress,
                desc=desc,
            )
            return scorer(masks)

        def gradients_at(inputs: Tensor) -> Tensor:
            call.check_inputs()
            return self._gradients_at(name, inputs, chosen, batch_size)

        def gradients() -> Tensor:
            return self._features(call.gradients()[name], x, name)

        return Context(
            layer=name,
            activations=activations,
            inputs=x,
            targets=chosen.indices,
            scores=call.scores,
            baseline_scores=call.baseline,
            model=self.model,
            _score=score,
            _gradients_at=gradients_at,
            _module=self._module,
            _batch_size=batch_size,
            _score_layer=score_layer,
            _gradients=gradients if self.method.needs_gradients else None,
            prefix_tokens=prefix,
        )

    def _module(self, name: str) -> nn.Module:
        # Resolved once, like the target layers.
        module = self._resolved.get(name)
        if module is None:
            module = self._resolved[name] = resolve(self.model, name)[1]
        return module

    def _map(self, ctx: Context, call: _Call) -> tuple[Tensor, Tensor | None]:
        method = self.method
        try:
            if method.computes_map():
                cam, weights = method.map(ctx), None
            else:
                weights = method.weights(ctx)
        except CamkitError:
            raise
        except Exception as exc:
            # Non-finite features make some computations fail (an SVD that does not
            # converge): report the cause, not its symptom.
            call.check_inputs(cause=exc)
            raise
        if weights is not None:
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
        return cam.detach().float(), weights

    def _gradients_at(
        self, name: str, inputs: Tensor, chosen: ResolvedTargets, batch_size: int
    ) -> Tensor:
        layers = [(n, m) for n, m in self._layers or [] if n == name]
        batch = chosen.indices.shape[0]
        if inputs.shape[0] % batch:
            raise PluginError(
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
                capture.check_finite()
                grads = capture.grad(chosen.score(out, index).sum())
            check_gradients(grads)
            parts.append(self._features(grads[name], chunk, name))
        return torch.cat(parts)


class _Call:
    """One call's captured tensors, its lazily computed gradients, and their checks.

    Whether scores, activations, gradients and maps are finite is checked once, at the end,
    through their sums (a sum is finite only when every term is; on a GPU the sums are
    stacked, one sync instead of one per tensor); only a failing total looks closer, to name
    the first tensor at fault. Work that costs more than the call itself (the scoring
    services, forwards of noisy copies) checks its inputs before it starts.
    """

    def __init__(
        self,
        method: Method,
        inputs: Tensor,
        capture: Capture,
        scores: Tensor,
        chosen: ResolvedTargets,
        target: Tensor,
    ) -> None:
        self.method = method.name
        self.inputs = inputs
        self.capture = capture
        self.scores = scores
        self.chosen = chosen
        self.baseline = target.detach()
        self._target: Tensor | None = target if method.needs_gradients else None
        self._gradients: dict[str, Tensor] | None = None

    def gradients(self) -> dict[str, Tensor]:
        """The target score's gradients at every layer, from one backward pass."""
        if self._gradients is None:
            assert self._target is not None
            target, self._target = self._target, None
            with grad_enabled():
                self._gradients = self.capture.grad(target.sum())
        return self._gradients

    def check_inputs(self, cause: BaseException | None = None) -> None:
        """The input, the activations and the target scores are finite, checked in that
        order: each is the likely cause of what follows it."""
        try:
            _check_input(self.inputs)
            self.capture.check_finite()
            check_scores(self.baseline)
        except CamkitError as error:
            if cause is None:
                raise
            raise error from cause

    def check(self, maps: dict[str, Tensor]) -> None:
        """Everything the call produced is finite; else the first tensor at fault is named."""
        parts = [self.baseline.sum()]
        parts += [act.detach().sum() for act in self.capture.activations.values()]
        if self._gradients is not None:
            parts += [grad.sum() for grad in self._gradients.values()]
        parts += [cam.sum() for cam in maps.values()]
        # On the CPU reading each sum costs less than stacking them; a GPU syncs once.
        on_cpu = self.baseline.device.type == "cpu"
        total = sum(p.item() for p in parts) if on_cpu else float(torch.stack(parts).sum())
        if math.isfinite(total):
            return
        self.check_inputs()
        if self._gradients is not None:
            check_gradients(self._gradients)
        for name, cam in maps.items():
            if not bool(torch.isfinite(cam).all()):
                raise PluginError(
                    f"method {self.method!r} produced non-finite values for layer {name!r}"
                )


def _validated_input(x: object, modules: list[nn.Module]) -> Tensor:
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
    param = next((p for m in modules for p in m._parameters.values() if p is not None), None)
    if param is not None and param.device != x.device:
        raise InputError(
            f"the input is on {x.device} but the model is on {param.device}; move one of them"
        )
    return x.detach()


def _check_input(x: Tensor) -> None:
    # Checked when something downstream is not finite (or a model raises): a NaN the model
    # ignores cannot reach the explanation, and one pass over a large batch is not free.
    if not _all_finite(x):
        raise InputError(NON_FINITE_INPUT)


def _all_finite(t: Tensor) -> bool:
    # A finite sum proves every element finite (one Inf or NaN makes the sum Inf or NaN), at
    # a fraction of the cost of an element-wise check, which only an overflowing sum needs.
    t = t.detach()
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())
