"""One door to the model: every forward and backward pass of one call goes through here.

:class:`Services` is built for one call of an extractor. It runs the clean pass (forward,
targets, the lazy backward) and the passes methods ask for through their :class:`~camkit.Context`:
masked and layer-masked scoring (:mod:`~camkit.engine.scoring`, ``layer_scoring``),
gradients at other inputs (:mod:`~camkit.engine.gradients_at`), Hessian-vector products
(:mod:`~camkit.engine.hessian`), attention gradients (:mod:`~camkit.engine.attention`). Whatever
the pass, the machinery is this file's:

- one chunk loop (:meth:`Services.chunks`: the run option ``batch_size``, the progress bar);
- one forward (:meth:`Services.run`): the memory layout the accelerator planned, and the one
  fallback when a model rejects a channels-last input;
- one precision scope (:meth:`Services.inference`) for the accelerator's plans;
- the health checks: a pass that costs more than the call checks the call's inputs before
  it starts, and the call's results are checked once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from camkit.engine.accel import ForwardPlan
from camkit.engine.batching import chunks
from camkit.engine.capture import Capture, check_gradients, grad_enabled
from camkit.engine.checks import NON_FINITE_INPUT, all_finite, check_input, total_is_finite
from camkit.engine.extra_passes import ExtraPasses
from camkit.engine.gradients_at import gradients_at
from camkit.engine.layer_scoring import score_layer
from camkit.engine.layers import resolve
from camkit.engine.options import Setup
from camkit.engine.outputs import scores_of, to_channels_first
from camkit.engine.scoring import score_masks
from camkit.engine.targeting import ResolvedTargets, check_scores, resolve_targets
from camkit.errors import CamkitError, InputError, PluginError
from camkit.targets import Targets


class Services(ExtraPasses):
    """Every pass through the model for one call, with its chunking, layout, precision,
    progress and checks (the object behind each :class:`camkit.Context` of the call).
    Input-gradient, second-order and attention passes come from
    :class:`~camkit.engine.extra_passes.ExtraPasses`.

    Args:
        setup: what the extractor fixes for all its calls.
        inputs: ``(B, C_in, H, W)`` (or ``(B, C_in, T, H, W)``) the validated input.
        layers: ``[(name, module)]`` the target layers.
        before_first_pass: called once, before the first pass a method asks for (a call
            whose clean pass was recorded saves the model's buffers then).
    """

    def __init__(
        self,
        setup: Setup,
        inputs: Tensor,
        layers: list[tuple[str, nn.Module]],
        before_first_pass: Callable[[], None] | None = None,
    ) -> None:
        self.setup, self.inputs, self.layers = setup, inputs, dict(layers)
        self._before_first_pass = before_first_pass
        self.model, self.options, self.accel = setup.model, setup.options, setup.accel
        self.method = setup.method
        self._features: dict[tuple[str, str], Tensor] = {}
        self._gradients: dict[str, Tensor] | None = None

    @classmethod
    def standalone(
        cls, setup: Setup, inputs: Tensor, score: Callable[[Tensor, Tensor | None], Tensor]
    ) -> Services:
        """Services for one pass without a clean pass (tests, benchmarks, e.g. ``score_masks``):
        ``score(rows, index)`` gives the target score of output rows from images ``index``."""
        door = cls(setup, inputs, [])
        door.chosen = ResolvedTargets(torch.zeros(0, dtype=torch.long), score)
        return door

    # -- the clean pass: forward, targets, backward -----------------------------------------

    def forward(self, targets: Targets, *, gradients: bool) -> None:
        """Run the model on the inputs once, capturing the target layers (with an autograd
        graph from the first of them when ``gradients``), and resolve the targets."""
        capture = self.capture = Capture(list(self.layers.items()), gradients=gradients)
        x = self.inputs
        layout = self.accel.explain_channels_last(x)  # before any hook (may be measured)
        with grad_enabled() if gradients else torch.inference_mode():
            if gradients and x.is_inference():
                x = x.clone()
            with capture:
                raw = self.run(self.model, x, layout, restart=capture.restart)[0]
            capture.check_ran()
            self._resolve(targets, raw, gradients)

    def recorded(
        self, targets: Targets, outputs: Sequence[Any], raw: object, *, gradients: bool
    ) -> None:
        """The clean pass from a forward the caller already ran on the inputs: the target
        layers' ``outputs`` (in order) and the model's ``raw`` scores, still joined by their
        autograd graph when ``gradients``. No pass through the model; :meth:`gradients`
        differentiates the caller's graph (once: a second backward through it raises)."""
        capture = self.capture = Capture(list(self.layers.items()), gradients=gradients)
        capture.take(outputs)
        with grad_enabled() if gradients else torch.inference_mode():
            self._resolve(targets, scores_of(raw), gradients)

    def _resolve(self, targets: Targets, raw: Tensor, gradients: bool) -> None:
        """Targets and target scores from the clean pass's ``raw`` output."""
        scores = raw.detach()
        self.chosen: ResolvedTargets = resolve_targets(targets, scores)
        target = self.chosen.raw(raw, None)
        self.targets, self.scores = self.chosen.indices, scores
        self.baseline_scores = target.detach() if target.requires_grad else target
        self._target = target if gradients else None

    def gradients(self, layer: str) -> Tensor:
        """``(B, C, h, w)`` d(target score)/d(activations); one backward pass for every layer,
        the first time any is read."""
        if not self.capture.gradients:
            raise PluginError(
                f"method {self.method!r} reads ctx.gradients but does not declare "
                "needs_gradients = True"
            )
        if self._gradients is None:
            assert self._target is not None
            target, self._target = self._target, None
            with grad_enabled():
                self._gradients = self.capture.grad(target.sum())
        return self.features(self._gradients[layer], layer, "gradients")

    def activations(self, layer: str) -> Tensor:
        """``(B, C, h, w)`` the layer's captured output, contiguous, channels first."""
        return self.features(self.capture.activations[layer].detach(), layer, "activations")

    def prefix_tokens(self, layer: str) -> int:
        """Leading tokens (class, register) of a token layer that are not in the grid."""
        output = self.capture.activations[layer]
        return output.shape[1] - self.activations(layer)[0, 0].numel() if output.dim() == 3 else 0

    # -- the passes a method asks for (each in its own module) --------------------------------

    def score(
        self, masks: Tensor, *, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """:func:`camkit.engine.scoring.score_masks`, after checking the call's inputs."""
        self.before_pass()
        return score_masks(self, masks, noise_std=noise_std, generator=generator)

    def score_layer(self, layer: str, masks: Tensor) -> Tensor:
        """:func:`camkit.engine.layer_scoring.score_layer`, after checking the inputs."""
        self.before_pass()
        return score_layer(self, layer, masks)

    def gradients_at(self, layer: str, inputs: Tensor) -> Tensor:
        """:func:`camkit.engine.gradients_at.gradients_at`, after checking the inputs."""
        self.before_pass()
        return gradients_at(self, layer, inputs)

    def module(self, name: str) -> nn.Module:
        """A submodule of the model by the layer rules (resolved once per extractor)."""
        module = self.setup.resolved.get(name)
        if module is None:
            module = self.setup.resolved[name] = resolve(self.model, name)[1]
        return module

    # -- the machinery every pass shares ----------------------------------------------------

    def view(self, t: Tensor, layer: str) -> Tensor:
        """``(B, C, h, w)`` view of a layer's output (sharing its storage where one exists)."""
        setup = self.setup
        return to_channels_first(t, setup.layout, setup.grid, self.inputs.shape[2:], layer)

    def features(self, t: Tensor, layer: str, kind: str) -> Tensor:
        """:meth:`view`, contiguous whatever layout the forward ran in; kept per call."""
        key = (layer, kind)
        if key not in self._features:
            self._features[key] = self.view(t, layer).contiguous()
        return self._features[key]

    def chunks(self, total: int, what: str) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` of each chunk of ``total`` rows: the one chunk loop."""
        return chunks(
            total, self.options.batch_size, self.options.progress, f"{self.method} {what}"
        )

    def run(
        self,
        model: Callable[[Tensor], object],
        batch: Tensor,
        channels_last: bool,
        restart: Callable[[], None] | None = None,
    ) -> tuple[Tensor, bool]:
        """The scores of ``model(batch)``, and whether it ran channels-last.

        The one layout fallback: a model that raises on a channels-last batch (one that calls
        ``.view`` on its features) is run on it as given, ``restart`` first (to forget a
        forward that failed part-way), and the accelerator told, so later plans keep to that.
        A model that raises on a non-finite input gets an :class:`InputError` naming it.
        """
        if not channels_last:
            return self._call(model, batch), False
        try:
            return self._call(model, batch.contiguous(memory_format=torch.channels_last)), True
        except CamkitError:
            raise
        except RuntimeError:
            if restart is not None:
                restart()
            scores = self._call(model, batch.contiguous())
            self.accel.rejected_channels_last()
            return scores, False

    def _call(self, model: Callable[[Tensor], object], batch: Tensor) -> Tensor:
        try:
            return scores_of(model(batch))
        except CamkitError:
            raise
        except Exception as exc:
            if not all_finite(self.inputs):  # a model may fail on NaN: say so
                raise InputError(NON_FINITE_INPUT) from exc
            raise

    @contextmanager
    def inference(self, plan: ForwardPlan) -> Iterator[None]:
        """Inference mode, and bfloat16 autocast where the plan says so (one region for the
        whole pass, so each weight is cast once)."""
        with torch.inference_mode():
            if not plan.autocast:
                yield
                return
            with torch.autocast(self.inputs.device.type, dtype=torch.bfloat16):
                yield

    def target_scores(self, out: Tensor, index: Tensor) -> Tensor:
        """``(n,)`` float32 target scores of output rows from images ``index`` (checked)."""
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()  # scores (a softmax, say) are computed in float32
        return self.chosen.score(out, index).float()

    # -- health checks ----------------------------------------------------------------------

    def before_pass(self) -> None:
        """What every pass a method asks for does first: check the call's inputs (a pass that
        costs more than the call is not run on NaN), and the first time, ``before_first_pass``."""
        self.check_inputs()
        first, self._before_first_pass = self._before_first_pass, None
        if first is not None:
            first()

    def check_inputs(self, cause: BaseException | None = None) -> None:
        """The input, the activations and the target scores are finite, checked in that
        order: each is the likely cause of what follows it."""
        try:
            check_input(self.inputs)
            self.capture.check_finite()
            check_scores(self.baseline_scores)
        except CamkitError as error:
            if cause is None:
                raise
            raise error from cause

    def check(self, maps: dict[str, Tensor]) -> None:
        """Everything the call produced is finite; else the first tensor at fault is named."""
        grads = list((self._gradients or {}).values())
        # The activations as methods read them (already off the graph), else as captured.
        captured = [
            self._features.get((name, "activations"), act)
            for name, act in self.capture.activations.items()
        ]
        captured += grads
        if total_is_finite([self.baseline_scores, *captured, *maps.values()]):
            return
        self.check_inputs()
        if self._gradients is not None:
            check_gradients(self._gradients)
        for name, cam in maps.items():
            if not bool(torch.isfinite(cam).all()):
                raise PluginError(
                    f"method {self.method!r} produced non-finite values for layer {name!r}"
                )
