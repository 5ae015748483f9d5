"""Reduced-precision inference copies of a model, for the scoring service's ``bf16`` mode.

Under bfloat16 autocast every layer still casts its inputs and weights, and batch norms and
activations run as separate passes over memory; on a CPU these passes, not the matrix
products, dominate a small network (MobileNetV3-Small gains only 1.2x from autocast). The
fast path forwards the masked inputs through a copy of the model instead:

- the copy is traced with :func:`torch.fx.symbolic_trace`, and every batch norm that reads a
  convolution's output alone (in eval mode, with running statistics) is folded into that
  convolution's weights, as inference compilers do;
- on CPU, an activation (ReLU, hardswish, SiLU, ...) that reads a 2-D convolution's output
  alone runs inside that convolution, as a oneDNN post-op, instead of as a second pass over
  memory; the fused operator is checked against the unfused pair once per process and per
  dtype (:mod:`camkit.engine.accel.hardware`: float32 fusion works on AVX2-only CPUs where
  bfloat16 fusion does not), and without it activations stay separate;
- on CPU, adaptive average pools to 1 x 1 (global pooling, squeeze-and-excitation blocks)
  run as average pools over the whole map, the same sums through a faster kernel;
- its parameters and buffers are converted to bfloat16 once, and to channels-last layout for
  models with 2-D convolutions;
- it is built on first use and kept while the model lives and its parameters, buffers and
  modules are unchanged (an in-place update of a weight bumps its version and rebuilds it).
  The full fingerprint (the module tree, each tensor's identity) is recomputed only after a
  module, parameter or buffer was assigned somewhere in the process (torch's registration
  hooks count these); otherwise a call checks the saved tensors' version counters and the
  modules' mode and hooks only.

The copy is only used where it computes what the model computes: models in eval mode with
no forward hooks whose forward traces (no Python branching on tensor values). Any other
model is forwarded under autocast, as before. The user's model is never modified.
"""

from __future__ import annotations

import copy
import itertools
import threading
import weakref

import torch
from torch import Tensor, fx, nn

from camkit.engine.accel.rewrites import (
    fold_batch_norms,
    fuse_activations,
    fuses,
    replace_global_pools,
)

_lock = threading.Lock()


class _Entry:
    """A built copy (or None: the model cannot be copied) and what it was built from."""

    def __init__(
        self,
        model: nn.Module,
        modules: list[nn.Module],
        dtype: torch.dtype,
        built: nn.Module | None,
    ) -> None:
        self.dtype, self.built = dtype, built
        self.generation = _generation()
        # Not the model itself: the cache holds entries while their model lives.
        self.submodules = modules[1:]
        self.tensors = [*model.parameters(), *model.buffers()]
        self.key = _fingerprint(modules, self.tensors)
        self.versions = _versions(self.tensors)

    def fresh(self, model: nn.Module, dtype: torch.dtype) -> bool:
        """Whether the copy still computes what ``model`` computes, checked cheaply when no
        module, parameter or buffer was assigned anywhere since it was built."""
        if dtype != self.dtype or self.versions is None:
            return False
        if self.generation != _generation():
            modules = list(model.modules())
            tensors = [*model.parameters(), *model.buffers()]
            if _fingerprint(modules, tensors) != self.key:
                return False
            self.generation = _generation()
        return _versions(self.tensors) == self.versions and _copyable([model, *self.submodules])


# model -> its copies, one per dtype
_cache: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, _Entry]] = (
    weakref.WeakKeyDictionary()
)


def inference_copy(
    model: nn.Module, dtype: torch.dtype = torch.bfloat16, *, build: bool = True
) -> nn.Module | None:
    """A traced copy of ``model`` in ``dtype`` with batch norms folded into convolutions, or
    ``None`` when ``model`` cannot be copied faithfully (train mode, forward hooks, a forward
    that does not trace, a model without floating-point parameters). With ``build=False``,
    only a copy already built (and still fresh) is returned."""
    with _lock:
        entries = _cache.setdefault(model, {})
        entry = entries.get(dtype)
        if entry is not None and entry.fresh(model, dtype):
            return entry.built
        modules = list(model.modules())
        if not build or not _copyable(modules):
            return None
        built = _build(model, modules, dtype)
        entries[dtype] = _Entry(model, modules, dtype, built)
        return built


def copy_status(model: nn.Module, dtype: torch.dtype) -> str:
    """What :func:`inference_copy` would do, without doing it: ``"ready"`` (a fresh copy is
    kept), ``"none"`` (the model cannot be copied) or ``"build"`` (a copy would be traced)."""
    with _lock:
        entry = _cache.get(model, {}).get(dtype)
        if entry is not None and entry.fresh(model, dtype):
            return "none" if entry.built is None else "ready"
    return "build" if _copyable(list(model.modules())) else "none"


# Assignments of modules, parameters and buffers anywhere in the process, counted through
# torch's public registration hooks: while the count stands still, no model's structure
# changed and the full fingerprint need not be recomputed.
_assignments = itertools.count()
_seen = [0]


def _bump(*_args: object) -> None:
    _seen[0] = next(_assignments)


for _register in (
    nn.modules.module.register_module_module_registration_hook,
    nn.modules.module.register_module_parameter_registration_hook,
    nn.modules.module.register_module_buffer_registration_hook,
):
    _register(_bump)


def _generation() -> int:
    return _seen[0]


def _copyable(modules: list[nn.Module]) -> bool:
    """Eval mode and no forward hooks (a traced copy runs the hooks of leaf modules but loses
    those of containers; rather than reason about which, a hooked model is run as it is)."""
    try:
        hooked = bool(
            nn.modules.module._global_forward_hooks
            or nn.modules.module._global_forward_pre_hooks
            or any(m._forward_hooks or m._forward_pre_hooks for m in modules)
        )
    except AttributeError:  # torch keeps hooks elsewhere in this build: assume some
        return False
    return not hooked and not any(m.training for m in modules)


def _versions(tensors: list[Tensor]) -> tuple[object, ...] | None:
    """The tensors' version counters (bumped by every in-place change) and storage (changed
    by ``model.to(...)``, which assigns ``.data``), or None where the counters cannot be
    read: inference tensors keep none, and another torch build may name them otherwise; the
    copy is then rebuilt for every call."""
    try:
        return tuple((t._version, t.data_ptr(), t.dtype) for t in tensors)
    except (AttributeError, RuntimeError):
        return None


def _fingerprint(modules: list[nn.Module], tensors: list[Tensor]) -> tuple[object, ...]:
    return (
        tuple(id(m) for m in modules),
        tuple((t.data_ptr(), t.dtype, t.device) for t in tensors),
    )


def _build(model: nn.Module, modules: list[nn.Module], dtype: torch.dtype) -> nn.Module | None:
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params or any(p.device != params[0].device for p in params):
        return None
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model))
    except Exception:  # untraceable forward (control flow on tensors, unsupported calls)
        return None
    fold_batch_norms(graph_module)
    if params[0].device.type == "cpu" and fuses(dtype):
        fuse_activations(graph_module)
    if params[0].device.type == "cpu":
        replace_global_pools(graph_module)
    graph_module.to(dtype)
    if any(isinstance(m, nn.Conv2d) for m in modules):
        graph_module.to(memory_format=torch.channels_last)
    graph_module.eval()
    for p in graph_module.parameters():
        p.requires_grad_(False)
    return graph_module
