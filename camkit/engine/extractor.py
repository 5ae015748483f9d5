"""The extractor: one method bound to one model and its target layers.

A call reads like the textbook algorithm: forward (capturing the target layers), targets,
backward (when the method first reads gradients), a map per layer, fuse. Every pass through
the model, and its checks, belong to the call's :class:`~camkit.engine.services.Services`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from camkit.engine.capture import preserved_buffers
from camkit.engine.checks import validated_input
from camkit.engine.layers import LayerSpec, locate, resolve_all
from camkit.engine.maps import fused, weighted_sum
from camkit.engine.options import RunOptions, Setup
from camkit.engine.outputs import Layout, check_layout
from camkit.engine.services import Services
from camkit.engine.sess import explain_sess
from camkit.engine.smoothing import augmentation_smoothed, check_eigen_smooth, eigen_map
from camkit.engine.targeting import all_positive, positive_pairs
from camkit.errors import CamkitError, ConfigError, InputError, LayerNotFoundError, PluginError
from camkit.method import Context, Method
from camkit.targets import AllPositive, Targets


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
        targets: ``(B,)`` long class indices explained (``-1`` under a callable target, unless
            it names its classes with a ``class_indices(scores)`` method).
        method: the method's name.
        layers: the target layers' names.
        images: ``(R,)`` long, under ``targets="all-positive"``: the batch image each row
            explains (with label ``targets[r]``); ``None`` when row ``i`` is image ``i``.
    """

    maps: Tensor
    layer_maps: dict[str, Tensor]
    weights: dict[str, Tensor]
    scores: Tensor
    targets: Tensor
    method: str = ""
    layers: list[str] = field(default_factory=list)
    images: Tensor | None = None

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``(image, target)`` of each row: ``(images[r], targets[r])``, or ``(r, targets[r])``."""
        images = range(len(self.targets)) if self.images is None else self.images.tolist()
        return list(zip(images, self.targets.tolist()))


class _FusedOnRead(CAMResult):
    """A :class:`CAMResult` whose ``maps``, unless given, are the layer maps fused to
    ``size`` when first read (a caller that reads only ``layer_maps`` skips the upsampling)."""

    _maps: Tensor | None

    def __init__(
        self, maps: Tensor | None = None, size: tuple[int, ...] = (), *fields: Any, **named: Any
    ) -> None:
        self._size = size  # named fields too: dataclasses.replace() passes them so
        super().__init__(maps, *fields, **named)  # type: ignore[arg-type]

    @property
    def maps(self) -> Tensor:
        if self._maps is None:
            self._maps = fused(list(self.layer_maps.values()), self._size)
        return self._maps

    @maps.setter
    def maps(self, value: Tensor | None) -> None:
        self._maps = value


class Extractor:
    """A CAM method bound to a model and its target layer(s); call it on a batch.

    Created by :func:`camkit.create`. The extractor holds no hooks between calls: each call
    attaches them, runs the model, and removes them, so extractors can share a model.

    Example:
        >>> cam = camkit.create("gradcam", model, "layer4")
        >>> res = cam(images, targets=[3, 7])  # res.maps: (2, H, W) in [0, 1]
    """

    def __init__(
        self,
        method: Method,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        options: RunOptions | None = None,
        input_shape: Sequence[int] | None = None,
        layout: Layout = "auto",
        grid: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        check_layout(layout, grid)
        self.method = method
        self.model = model
        self._setup = Setup.of(model, options, layout=layout, grid=grid, method=method.name)
        self.options = self._setup.options
        self._accel = self._setup.accel
        check_eigen_smooth(self.options.eigen_smooth, method)
        self._lock = threading.Lock()
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

    @cached_property
    def _modules(self) -> list[nn.Module]:
        # Listed once, like the layers: walking the module tree on every call costs more
        # than a small model's forward pass.
        return list(self.model.modules())

    @cached_property
    def _buffered(self) -> list[nn.Module]:
        # Only modules with buffers of their own can change state in train mode.
        return [m for m in self._modules if m._buffers]

    @property
    def layers(self) -> list[str] | None:
        """Names of the target layers (``None`` until located on the first input)."""
        return None if self._layers is None else [name for name, _ in self._layers]

    def __repr__(self) -> str:
        return f"Extractor(method={self.method.name!r}, layers={self.layers!r})"

    def __call__(self, x: Tensor, targets: Targets | AllPositive | str = None) -> CAMResult:
        """Explain ``x`` for ``targets``.

        Args:
            x: ``(B, C, H, W)`` images (or ``(B, C, T, H, W)`` videos), finite floats on the
                model's device.
            targets: ``None`` (each image's predicted class), an int, a list or 1-D tensor of
                ``B`` ints, a callable ``fn(scores) -> (B,)`` (optionally
                ``fn(scores, index)``, see :mod:`camkit.targets`), or ``"all-positive"`` /
                :class:`~camkit.targets.AllPositive` (one row per positive label, see
                :attr:`CAMResult.images`).
        """
        x = validated_input(x, self._modules)
        if isinstance(targets, (str, AllPositive)):
            return self._positive_labels(x, all_positive(targets))
        if self.options.aug_smooth:  # smoothing.py: six augmented copies, mapped back
            return augmentation_smoothed(self._explain, x, targets)
        return self._explain(x, targets)

    def _explain(self, x: Tensor, targets: Targets) -> CAMResult:
        if self.options.sess is None:
            return self._cam(x, targets)
        layers = [name for name, _ in self._layers_for(x)]
        with preserved_buffers(self.model, self._buffered):  # sess.py: windows, fused
            scores, chosen, fused, maps = explain_sess(
                self.model,
                x,
                targets,
                self.options.sess,
                lambda windows, target: self._cam(windows, target).maps,
                self.options.batch_size,
            )
        return CAMResult(
            maps, dict.fromkeys(layers, fused), {}, scores, chosen, self.method.name, layers
        )

    def _cam(self, x: Tensor, targets: Targets) -> CAMResult:
        layers = self._layers_for(x)
        method = self.method
        with preserved_buffers(self.model, self._buffered):
            call = Services(self._setup, x, layers)
            call.forward(method.objective(targets), gradients=method.needs_gradients)
            layer_maps, weights = self._layer_maps(call, layers)
        return self._result(call, x, layer_maps, weights)

    def explain_recorded(
        self, x: Tensor, outputs: Sequence[object], scores: object, targets: Targets = None
    ) -> CAMResult:
        """Explain a forward pass the caller already ran, without running the model again.

        What the compat shims use: a torchcam script runs the model itself, then asks for the
        maps. The clean pass is taken from that run; a method that needs more passes (masked
        inputs, noise) still runs the model for them.

        Args:
            x: ``(B, C, H, W)`` the input of that forward pass.
            outputs: the target layers' outputs in it, in the order of :attr:`layers`, as the
                forward left them (an in-place op after a layer, such as
                ``ReLU(inplace=True)``, has changed what was recorded, unless the hook handed
                the rest of the model a copy); for a method that reads gradients, still on the
                autograd graph of ``scores``.
            scores: the model's output for ``x`` (read as :meth:`__call__` reads it).
            targets: as for :meth:`__call__`, but not ``"all-positive"``.

        Returns:
            the :class:`CAMResult` of a call on ``x`` (its ``maps`` are fused when first read).

        Raises:
            GradientError: the scores do not depend on an output through the graph (recorded
                under ``torch.no_grad()``), or its graph was freed by an earlier backward.

        Example:
            >>> cam = camkit.create("gradcam", model, "layer4")
            >>> out = {}
            >>> handle = model.layer4.register_forward_hook(lambda m, i, o: out.update(a=o))
            >>> scores = model(images)
            >>> handle.remove()
            >>> res = cam.explain_recorded(images, [out["a"]], scores, targets=[3, 7])
        """
        x = validated_input(x, ())  # no device check: the model already ran on x
        if isinstance(targets, (str, AllPositive)) or self.options.aug_smooth or self.options.sess:
            raise ConfigError(
                "explain_recorded explains one recorded pass: it takes class or callable "
                "targets, without aug_smooth or sess (call the extractor for those)"
            )
        if self._layers is None:
            raise LayerNotFoundError(
                "explain_recorded needs the extractor's layers: create it with a layer"
            )
        layers, method = self._layers, self.method
        if not isinstance(outputs, Sequence) or len(outputs) != len(layers):
            raise InputError(
                f"explain_recorded takes one recorded output per layer ({len(layers)}: "
                f"{', '.join(name for name, _ in layers)}), in that order"
            )
        with ExitStack() as buffers:
            # No pass runs unless the method asks for one: the buffers are saved then.
            def save_buffers() -> None:
                buffers.enter_context(preserved_buffers(self.model, self._buffered))

            call = Services(self._setup, x, layers, before_first_pass=save_buffers)
            call.recorded(
                method.objective(targets), outputs, scores, gradients=method.needs_gradients
            )
            layer_maps, weights = self._layer_maps(call, layers)
        return self._result(call, x, layer_maps, weights, fuse_on_read=True)

    def _layer_maps(
        self, call: Services, layers: list[tuple[str, nn.Module]]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Each layer's map and weights from the call's clean pass, checked."""
        layer_maps, weights = {}, {}
        for name, _ in layers:  # the backward runs when a method first reads gradients
            layer_maps[name], w = self._layer_map(Context(name, call), call)
            if w is not None:
                weights[name] = w
        call.check(layer_maps)
        return layer_maps, weights

    def _result(
        self,
        call: Services,
        x: Tensor,
        layer_maps: dict[str, Tensor],
        weights: dict[str, Tensor],
        *,
        fuse_on_read: bool = False,
    ) -> CAMResult:
        """The call's result; ``fuse_on_read``: camkit's fusion of the layers waits for the
        first read of ``maps``."""
        maps, size = self._fused(layer_maps, x), tuple(x.shape[2:])
        names = list(call.layers)
        found = (layer_maps, weights, call.scores, call.targets, self.method.name, names)
        if fuse_on_read:
            return _FusedOnRead(maps, size, *found)
        if maps is None:
            maps = fused(list(layer_maps.values()), size)
        return CAMResult(maps, *found)

    def _fused(self, layer_maps: dict[str, Tensor], x: Tensor) -> Tensor | None:
        """The method's own fusion of the layers (checked), or ``None`` for camkit's."""
        method = self.method
        maps = method.fuse(list(layer_maps.values()), tuple(x.shape[2:]))
        if maps is not None and (
            not isinstance(maps, Tensor) or tuple(maps.shape) != (x.shape[0], *x.shape[2:])
        ):
            raise PluginError(f"method {method.name!r} fused its layers into a wrong shape")
        return maps

    # -- steps ----------------------------------------------------------------------------

    def _positive_labels(self, x: Tensor, spec: AllPositive) -> CAMResult:
        """One row per positive ``(image, label)`` pair of the clean logits."""
        with preserved_buffers(self.model, self._buffered):
            images, labels, scores = positive_pairs(spec, self.model, x)
        if not len(images):  # no image has a positive label: nothing to explain
            empty = x.new_zeros((0, *x.shape[2:]), dtype=torch.float32)
            layers = [name for name, _ in self._layers_for(x)]
            return CAMResult(empty, {}, {}, scores[:0], labels, self.method.name, layers, images)
        result = self(x[images.to(x.device)], labels)
        result.images = images
        return result

    def _layers_for(self, x: Tensor) -> list[tuple[str, nn.Module]]:
        if self._layers is None:
            with self._lock:
                if self._layers is None:
                    with preserved_buffers(self.model, self._buffered):
                        self._layers = [locate(self.model, x)]
        return self._layers

    def _layer_map(self, ctx: Context, call: Services) -> tuple[Tensor, Tensor | None]:
        """The method's ``(B, h, w)`` map of one layer (after its ReLU), and its weights."""
        method, acts = self.method, ctx.activations
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
            smooth = self.options.eigen_smooth  # the first principal component of w_k A_k
            cam = eigen_map(weights, acts) if smooth else weighted_sum(weights, acts)
            if weights.requires_grad:
                weights = weights.detach()
        expected = (acts.shape[0], *acts.shape[2:])
        at_input = weights is None and tuple(cam.shape) == (acts.shape[0], *ctx.inputs.shape[2:])
        if tuple(cam.shape) != expected and not at_input:
            raise PluginError(
                f"method {method.name!r} returned a map of shape {tuple(cam.shape)} for layer "
                f"{ctx.layer!r}; expected {expected}"
            )
        if method.relu:
            cam = torch.relu(cam)
        if cam.requires_grad or cam.dtype != torch.float32:
            cam = cam.detach().float()
        return cam, weights
