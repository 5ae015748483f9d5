"""The extractor protocol of torchcam 0.5.0, computed by camkit.

The user runs the model; hooks record the target layers' outputs (and the model's input);
calling the extractor with class indices (and the scores, for gradient methods) returns one
``(N, h, w)`` map per target layer, at the layer's resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import cached_property, partial
from types import TracebackType
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.compat._shared import CompatTypeError, eval_mode, extractor
from camkit.errors import (
    CamkitError,
    GradientError,
    InputError,
    LayerNotFoundError,
    TargetError,
    did_you_mean,
)

__all__ = ["NotForwardedError", "OutputTarget"]

logger = logging.getLogger(__name__)

#: A scalar target: maps one sample's model output to a 0-d tensor.
OutputTarget = Callable[[Any], Tensor]

LayerArg = nn.Module | str | list[nn.Module | str] | None


def _per_sample(targets: OutputTarget | list[OutputTarget], batch: int) -> list[OutputTarget]:
    if callable(targets):
        return [targets] * batch
    if not isinstance(targets, list) or not all(callable(t) for t in targets):
        raise CompatTypeError("targets must be a callable or a list of callables")
    if len(targets) != batch:
        raise TargetError(
            f"got {len(targets)} per-sample targets for a batch of {batch}; give one per sample"
        )
    return targets


def camkit_target(targets: OutputTarget | list[OutputTarget], batch: int) -> Callable[..., Tensor]:
    """camkit's ``fn(scores, index) -> (N,)`` from torchcam's per-sample scalar targets."""
    fns = _per_sample(targets, batch)

    def score(rows: Tensor, index: Tensor) -> Tensor:
        values = [fns[int(i)](row) for row, i in zip(rows, index.tolist())]
        if not all(isinstance(v, Tensor) for v in values):
            raise CompatTypeError("an output target must return a tensor")
        if not all(v.numel() == 1 for v in values):
            raise TargetError("an output target must return a scalar tensor for each sample")
        return torch.stack([v.reshape(()) for v in values])

    return score


def _tracing() -> bool:
    """Whether the forward is being traced or compiled (not the time to build anything)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class NotForwardedError(CamkitError, AssertionError):
    """The extractor was called before the model ran with its hooks enabled (an
    ``AssertionError``, as in torchcam)."""


class _CAM:
    """Base of the torchcam-compatible extractors.

    Args:
        model: the model the user runs.
        target_layer: a layer, its name, a list of those, or ``None`` (located on a zero input
            of ``input_shape``).
        input_shape: ``(C, H, W)`` used only to locate the layer when none is given.
        enable_hooks: whether the hooks record from the start.
        reshape_transform: turns a layer's output into ``(N, C, h, w)``; camkit reads token
            ``(N, T, D)`` and channels-last outputs itself, so the transform only has to agree
            with that reading (checked on each call).
    """

    #: camkit's name of the method.
    _method: str = ""
    #: whether the map is computed from the user's recorded forward (no second forward).
    _from_recorded: ClassVar[bool] = False
    _needs_gradients: ClassVar[bool] = False
    #: whether calling needs the model's scores.
    _score_used: ClassVar[bool] = False
    #: whether ``targets=`` callables are accepted.
    _targets_supported: ClassVar[bool] = True

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerArg = None,
        input_shape: tuple[int, ...] = (3, 224, 224),
        enable_hooks: bool = True,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        **config: Any,
    ) -> None:
        if reshape_transform is not None and not callable(reshape_transform):
            raise CompatTypeError("`reshape_transform` must be callable")
        if reshape_transform is not None and target_layer is None:
            raise LayerNotFoundError("`target_layer` must be specified with `reshape_transform`")
        self.model = model
        self.target_names = self._target_names(model, target_layer, input_shape)
        self._reshape_transform = reshape_transform
        self._config = config
        self._extractor: camkit.Extractor | None = None
        self.reset_hooks()
        self.hook_handles: list[torch.utils.hooks.RemovableHandle] = []
        for idx, name in enumerate(self.target_names):
            hook = partial(self._hook_a, idx=idx)
            self.hook_handles.append(self._submodule(name).register_forward_hook(hook))
        # Kept apart from hook_handles, which torchcam's users count (one per layer).
        self._input_handle = model.register_forward_pre_hook(self._store_input)
        self._hooks_enabled = enable_hooks

    # -- layers ---------------------------------------------------------------------------

    def _target_names(
        self, model: nn.Module, target_layer: LayerArg, input_shape: tuple[int, ...]
    ) -> list[str]:
        if target_layer is None:
            located = camkit.create("gradcam", model, None, input_shape=input_shape).layers
            assert located is not None
            logger.warning(f"no value was provided for `target_layer`, thus set to '{located[0]}'.")
            return list(located)
        layers = target_layer if isinstance(target_layer, list) else [target_layer]
        names = []
        for layer in layers:
            if isinstance(layer, nn.Module):
                names.append(self._resolve_layer_name(layer))
            elif isinstance(layer, str):
                names.append(layer)
            else:
                raise CompatTypeError(
                    f"invalid argument type for `target_layer`: {type(layer).__name__}; expected "
                    "a module, its name, or a list of those"
                )
        for name in names:
            self._submodule(name)
        return names

    @cached_property
    def submodule_dict(self) -> dict[str, nn.Module]:
        """``dict(model.named_modules())`` (listed when first read)."""
        return dict(self.model.named_modules())

    def _submodule(self, name: str, argument: str = "target_layer") -> nn.Module:
        """The model's submodule of dotted name ``name`` (found without listing the model)."""
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            raise LayerNotFoundError(
                f"unknown `{argument}` name {name!r} (see model.named_modules())."
                + did_you_mean(name, self.submodule_dict)
            ) from None

    def _resolve_layer_name(self, target_layer: nn.Module) -> str:
        """The dotted name of ``target_layer`` inside the model."""
        for name, module in self.model.named_modules():
            if module is target_layer:
                return name
        raise LayerNotFoundError(
            f"the module {type(target_layer).__name__} given as a layer is not part of the model"
        )

    # -- hooks ----------------------------------------------------------------------------

    def _hook_a(self, _: nn.Module, _input: Any, output: Tensor, idx: int = 0) -> None:
        if self._hooks_enabled:
            self._outputs[idx] = output
            shown = self._reshape_transform(output) if self._reshape_transform else output
            self.hook_a[idx] = shown.detach()

    def _store_input(self, _: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self._hooks_enabled and inputs and isinstance(inputs[0], Tensor):
            self._input: Tensor | None = inputs[0].detach()
            if self._extractor is None and self._from_recorded and not _tracing():
                # Made now rather than when called: after the forward, each step of Python
                # runs on caches the model's tensors have flushed, several times slower.
                with suppress(CamkitError):  # the call makes it again, and reports
                    self._camkit()

    def enable_hooks(self) -> None:
        """Enable hooks."""
        self._hooks_enabled = True

    def disable_hooks(self) -> None:
        """Disable hooks."""
        self._hooks_enabled = False

    @contextmanager
    def _hooks_off(self) -> Iterator[None]:
        previous, self._hooks_enabled = self._hooks_enabled, False
        try:
            yield
        finally:
            self._hooks_enabled = previous

    def _eval_mode(self) -> AbstractContextManager[None]:
        return eval_mode(self.model)

    def reset_hooks(self) -> None:
        """Clear the recorded activations, gradients and input."""
        self.hook_a: list[Tensor | None] = [None] * len(self.target_names)
        self.hook_g: list[Tensor | None] = [None] * len(self.target_names)
        self._outputs: list[Tensor | None] = [None] * len(self.target_names)
        self._input = None

    def remove_hooks(self) -> None:
        """Remove the hooks from the model."""
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles.clear()
        self._input_handle.remove()

    def __enter__(self) -> _CAM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.remove_hooks()
        finally:
            self.reset_hooks()

    # -- computing ------------------------------------------------------------------------

    def _precheck(self, class_idx: int | list[int] | None, scores: Any, targets: Any) -> None:
        if (class_idx is None) == (targets is None):
            raise TargetError("provide exactly one of class_idx or targets")
        if targets is not None and not self._targets_supported:
            raise TargetError(f"{type(self).__name__} does not support arbitrary output targets")
        for fmap in self.hook_a:
            if not isinstance(fmap, Tensor):
                raise NotForwardedError(
                    "no activations were recorded: forward inputs through the model (with hooks "
                    "enabled) before calling the extractor"
                )
            if isinstance(class_idx, list) and fmap.shape[0] != len(class_idx):
                raise TargetError(
                    f"got {len(class_idx)} class indices for a batch of {fmap.shape[0]}; "
                    "expected the batch size and the length of `class_idx` to be the same"
                )
        if targets is None:
            indices = class_idx if isinstance(class_idx, list) else [class_idx]
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
                raise TargetError(
                    f"incorrect `class_idx` {class_idx!r}: expected a non-negative int or a list "
                    "of them"
                )
        if self._score_used and scores is None:
            raise TargetError("the model's output scores are needed to compute these CAMs")

    def __call__(
        self,
        class_idx: int | list[int] | None = None,
        scores: Any = None,
        normalized: bool = True,
        *,
        targets: OutputTarget | list[OutputTarget] | None = None,
        **kwargs: Any,
    ) -> list[Tensor]:
        """One ``(N, h, w)`` map per target layer (normalized to ``[0, 1]`` by default)."""
        self._precheck(class_idx, scores, targets)
        return self.compute_cams(class_idx, scores, normalized, targets=targets, **kwargs)

    def compute_cams(
        self,
        class_idx: int | list[int] | None = None,
        scores: Any = None,
        normalized: bool = True,
        *,
        targets: OutputTarget | list[OutputTarget] | None = None,
        **kwargs: Any,
    ) -> list[Tensor]:
        """Compute the maps for ``class_idx`` (or ``targets``) without the argument checks.

        Args:
            class_idx: a class index for the whole batch, or one per sample.
            scores: the model's ``(N, K)`` output for the hooked forward pass.
            normalized: min-max normalize each map to ``[0, 1]``.
            targets: a scalar target (or one per sample) instead of class indices.
            kwargs: ``retain_graph`` keeps the user's autograd graph (the maps are then
                computed from a fresh forward pass).

        Returns:
            one ``(N, h, w)`` map per target layer.
        """
        chosen: Any = camkit_target(targets, self._batch()) if targets is not None else class_idx
        return self._cams(chosen, scores, normalized, bool(kwargs.get("retain_graph", False)))

    def _cams(self, chosen: Any, scores: Any, normalized: bool, retain_graph: bool) -> list[Tensor]:
        """One ``(N, h, w)`` map per target layer for camkit's ``targets`` ``chosen``."""
        result = self._run(chosen, scores, retain_graph)
        cams = self._maps(result)
        return [self._normalize(cam) if normalized else cam for cam in cams]

    def _batch(self) -> int:
        fmap = self.hook_a[0]
        assert fmap is not None
        return fmap.shape[0]

    def _run(self, targets: Any, scores: Any, retain_graph: bool) -> camkit.CAMResult:
        """Run camkit: on the recorded forward when possible, else on the recorded input."""
        if self._from_recorded and not retain_graph and self._can_use_recorded(scores):
            try:
                return self._run_recorded(targets, scores)
            except GradientError:
                pass  # the graph is gone (a second call) or was never built: run afresh
        return self._run_model(targets)

    def _can_use_recorded(self, scores: Any) -> bool:
        outputs = self._outputs
        if not all(isinstance(o, Tensor) for o in outputs):
            return False
        if not self._needs_gradients:
            return True
        return isinstance(scores, Tensor) and all(
            isinstance(o, Tensor) and o.requires_grad for o in outputs
        )

    def _run_recorded(self, targets: Any, scores: Any) -> camkit.CAMResult:
        """camkit on the user's own forward: no second pass through the model."""
        if not isinstance(scores, Tensor):
            scores = self._placeholder_scores()
        # Hooks paused in case the method runs the model (inline: a call this short notices a
        # generator-based context manager).
        previous, self._hooks_enabled = self._hooks_enabled, False
        try:
            return self._camkit().explain_recorded(
                self._recorded_input(), self._outputs, scores, targets
            )
        finally:
            self._hooks_enabled = previous

    def _placeholder_scores(self) -> Tensor:
        """Scores for methods that never read them (CAM): one column per class."""
        raise NotImplementedError

    def _run_model(self, targets: Any) -> camkit.CAMResult:
        with self._hooks_off(), eval_mode(self.model):
            return self._camkit()(self._recorded_input(), targets)

    def _camkit(self) -> camkit.Extractor:
        """camkit's extractor of the method on the model's target layers (made once)."""
        if self._extractor is None:
            config = self._camkit_config()
            method = self._camkit_method(config)
            self._extractor = extractor(method, self.model, list(self.target_names), config)
        return self._extractor

    def _recorded_input(self) -> Tensor:
        if self._input is None:
            raise NotForwardedError(
                "no model input was recorded: forward inputs through the model (with hooks "
                "enabled) before calling the extractor"
            )
        return self._input

    def _camkit_method(self, config: dict[str, Any]) -> str | camkit.Method:
        """camkit's method: a name for :func:`camkit.create`, or a configured instance."""
        return self._method

    def _camkit_config(self) -> dict[str, Any]:
        """camkit's configuration of the method (keyword arguments of ``camkit.create``)."""
        return {}

    def _maps(self, result: camkit.CAMResult) -> list[Tensor]:
        """``(N, h, w)`` per target layer in order, from camkit's result."""
        maps = list(result.layer_maps.values())
        for cam, fmap in zip(maps, self.hook_a):
            assert fmap is not None
            expected = (fmap.shape[0], *fmap.shape[2:])
            if self._reshape_transform is not None and tuple(cam.shape) != expected:
                raise LayerNotFoundError(
                    f"camkit read the layer's output as maps of shape {tuple(cam.shape)} but "
                    f"`reshape_transform` gives {tuple(fmap.shape)}; camkit reads tokens "
                    "(N, 1 + h*w, D) and channels-last (N, h, w, C) outputs itself"
                )
        return maps

    @staticmethod
    def _normalize(cams: Tensor, spatial_dims: int | None = None, eps: float = 1e-8) -> Tensor:
        """torchcam's normalization: ``(m - min) / (max(m - min) + eps)`` per map (off the
        autograd graph, as torchcam's is)."""
        if cams.requires_grad:
            cams = cams.detach()
        spatial_dims = cams.ndim - 1 if spatial_dims is None else spatial_dims
        dims = tuple(range(cams.ndim - spatial_dims, cams.ndim))
        cams = cams - cams.amin(dim=dims, keepdim=True)
        return cams.div_(cams.amax(dim=dims, keepdim=True) + eps)

    def _extra_repr(self) -> str:
        return f"target_layer={self.target_names}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._extra_repr()})"

    @classmethod
    def fuse_cams(cls, cams: list[Tensor], target_shape: tuple[int, int] | None = None) -> Tensor:
        """Fuse per-layer maps: upsample to the largest (or ``target_shape``), element-wise max.

        Args:
            cams: ``(N, h_i, w_i)`` maps of the same inputs, one per layer.
            target_shape: ``(H, W)`` of the fused map (default: the largest of the maps).

        Returns:
            the ``(N, H, W)`` fused map.

        Example:
            >>> from camkit.compat.torchcam.methods import GradCAM
            >>> fused = GradCAM.fuse_cams([torch.rand(1, 7, 7), torch.rand(1, 14, 14)])
            >>> tuple(fused.shape)
            (1, 14, 14)
        """
        return fuse_cams(cams, target_shape, cls._scale_cams)

    @staticmethod
    def _scale_cams(cams: list[Tensor]) -> list[Tensor]:
        return cams


def fuse_cams(
    cams: list[Tensor],
    target_shape: tuple[int, ...] | None = None,
    scale: Callable[[list[Tensor]], list[Tensor]] | None = None,
) -> Tensor:
    """Fuse maps of several layers as torchcam does: no renormalization, bilinear upsampling
    (trilinear for videos) to the largest shape, element-wise maximum.

    Args:
        cams: ``(N, h_i, w_i)`` (or ``(N, t_i, h_i, w_i)``) maps.
        target_shape: the fused map's spatial shape (default: the largest of the maps).
        scale: applied to the maps first (LayerCAM's ``tanh(2 m)``).

    Example:
        >>> tuple(fuse_cams([torch.rand(2, 7, 7), torch.rand(2, 14, 14)]).shape)
        (2, 14, 14)
    """
    if not isinstance(cams, list) or not all(isinstance(c, Tensor) for c in cams):
        raise CompatTypeError("`cams` must be a list of tensors")
    if not cams:
        raise InputError("`cams` cannot be an empty list")
    if len(cams) == 1:
        return cams[0]
    shape = target_shape or tuple(max(s) for s in zip(*(c.shape[1:] for c in cams)))
    scaled = scale(cams) if scale is not None else cams
    mode = {3: "bilinear", 4: "trilinear"}.get(scaled[0].ndim, "nearest")
    fused: Tensor | None = None
    for cam in scaled:
        up = F.interpolate(cam.unsqueeze(1), shape, mode=mode, align_corners=False)
        fused = up if fused is None else torch.maximum(fused, up)
    assert fused is not None
    return fused.squeeze(1)
