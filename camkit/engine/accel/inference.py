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
from collections import Counter

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from camkit.engine.accel.hardware import capabilities

_CONV_BN = (
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
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


def inference_copy(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module | None:
    """A traced copy of ``model`` in ``dtype`` with batch norms folded into convolutions, or
    ``None`` when ``model`` cannot be copied faithfully (train mode, forward hooks, a forward
    that does not trace, a model without floating-point parameters)."""
    with _lock:
        entries = _cache.setdefault(model, {})
        entry = entries.get(dtype)
        if entry is not None and entry.fresh(model, dtype):
            return entry.built
        modules = list(model.modules())
        if not _copyable(modules):
            return None
        built = _build(model, modules, dtype)
        entries[dtype] = _Entry(model, modules, dtype, built)
        return built


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
    _fold_batch_norms(graph_module)
    if params[0].device.type == "cpu" and fuses(dtype):
        _fuse_activations(graph_module)
    if params[0].device.type == "cpu":
        _replace_global_pools(graph_module)
    graph_module.to(dtype)
    if any(isinstance(m, nn.Conv2d) for m in modules):
        graph_module.to(memory_format=torch.channels_last)
    graph_module.eval()
    for p in graph_module.parameters():
        p.requires_grad_(False)
    return graph_module


def _fold_batch_norms(graph_module: fx.GraphModule) -> None:
    """Fold each eval-mode batch norm whose input is a convolution's output (and nothing else
    reads that output) into the convolution."""
    named = dict(graph_module.named_modules())
    once = _called_once(graph_module.graph)
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = _sole_reader_of(node, once)
        if source is None:
            continue
        conv, bn = named.get(str(source.target)), named.get(str(node.target))
        if not any(isinstance(conv, c) and isinstance(bn, b) for c, b in _CONV_BN):
            continue
        assert isinstance(conv, nn.modules.conv._ConvNd)
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if bn.track_running_stats and bn.running_mean is not None:
            _absorb(graph_module, named, node, source, fuse_conv_bn_eval(conv, bn))
    graph_module.graph.lint()
    graph_module.recompile()


def _called_once(graph: fx.Graph) -> set[str]:
    """Targets of the modules ``graph`` calls exactly once (a reused module is never
    rewritten: its other calls would change too)."""
    counts = Counter(str(n.target) for n in graph.nodes if n.op == "call_module")
    return {target for target, count in counts.items() if count == 1}


def _sole_reader_of(node: fx.Node, once: set[str]) -> fx.Node | None:
    """The module call whose output ``node`` reads first, when ``node`` is its only reader
    and the module runs once; else None."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source.op != "call_module":
        return None
    if len(source.users) != 1 or str(source.target) not in once:
        return None
    return source


def _absorb(
    graph_module: fx.GraphModule,
    named: dict[str, nn.Module],
    node: fx.Node,
    source: fx.Node,
    fused: nn.Module,
) -> None:
    """Replace ``source``'s module by ``fused``, which also computes ``node``, and drop
    ``node`` from the graph."""
    _replace_module(graph_module, str(source.target), fused)
    named[str(source.target)] = fused
    node.replace_all_uses_with(source)
    graph_module.graph.erase_node(node)


def global_avg_pool(x: Tensor) -> Tensor:
    """``adaptive_avg_pool2d(x, 1)`` as an average pool over the whole map: the same sums,
    3-6x faster on channels-last bfloat16 maps on a CPU."""
    return F.avg_pool2d(x, kernel_size=tuple(x.shape[-2:]))


class GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return global_avg_pool(x)


def _is_one(size: object) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and list(size) == [1, 1])


def _replace_global_pools(graph_module: fx.GraphModule) -> None:
    """Run adaptive average pools to a 1 x 1 output (modules and function calls) as
    :func:`global_avg_pool`."""
    named = dict(graph_module.named_modules())
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            module = named.get(str(node.target))
            if isinstance(module, nn.AdaptiveAvgPool2d) and _is_one(module.output_size):
                _replace_module(graph_module, str(node.target), GlobalAvgPool())
        elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
            if len(node.args) == 2 and not node.kwargs and _is_one(size):
                node.target = global_avg_pool
                node.args = node.args[:1]
    graph_module.recompile()


#: Activations oneDNN runs as a convolution's post-op: the operator's name for each, and
#: its scalar arguments, with the module and the functions that compute it.
PostOp = tuple[str, tuple[float, ...]]
_ACTIVATIONS: list[tuple[type[nn.Module], tuple[object, ...], PostOp]] = [
    (nn.ReLU, (torch.relu, F.relu), ("relu", ())),
    (nn.ReLU6, (F.relu6,), ("hardtanh", (0.0, 6.0))),
    (nn.Hardswish, (F.hardswish,), ("hardswish", ())),
    (nn.Hardsigmoid, (F.hardsigmoid,), ("hardsigmoid", ())),
    (nn.SiLU, (F.silu,), ("swish", ())),
    (nn.Sigmoid, (torch.sigmoid,), ("sigmoid", ())),
    (nn.Tanh, (torch.tanh,), ("tanh", ())),
]
POST_OPS: dict[type[nn.Module], PostOp] = {kind: op for kind, _, op in _ACTIVATIONS}
_POST_OP_FUNCTIONS: dict[object, PostOp] = {
    fn: op for _, functions, op in _ACTIVATIONS for fn in functions
}


class ConvActivation(nn.Module):
    """A 2-D convolution with its activation applied as a oneDNN post-op (CPU only)."""

    def __init__(self, conv: nn.Conv2d, post_op: PostOp) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.padding = [int(p) for p in conv.padding]
        self.stride = list(conv.stride)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.post_op, self.scalars = post_op[0], list(post_op[1])

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x,
            self.weight,
            self.bias,
            self.padding,
            self.stride,
            self.dilation,
            self.groups,
            self.post_op,
            self.scalars,
            "",
        )


def _fusable_conv(module: object) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _post_op(node: fx.Node, named: dict[str, nn.Module]) -> PostOp | None:
    """The post-op of an activation node that takes one positional input, else None."""
    if len(node.args) != 1:
        return None
    if node.op == "call_module":
        module = named.get(str(node.target))
        if type(module) is nn.Hardtanh:
            return ("hardtanh", (float(module.min_val), float(module.max_val)))
        return POST_OPS.get(type(module)) if module is not None else None
    if node.op == "call_function" and not set(node.kwargs) - {"inplace"}:
        try:
            return _POST_OP_FUNCTIONS.get(node.target)
        except TypeError:  # an unhashable target
            return None
    return None


def _fuse_activations(graph_module: fx.GraphModule) -> None:
    """Run each activation that alone reads a 2-D convolution's output as its post-op."""
    named = dict(graph_module.named_modules())
    once = _called_once(graph_module.graph)
    for node in list(graph_module.graph.nodes):
        post_op = _post_op(node, named)
        source = _sole_reader_of(node, once) if post_op is not None else None
        if source is None:
            continue
        conv = named.get(str(source.target))
        if post_op is not None and _fusable_conv(conv):
            assert isinstance(conv, nn.Conv2d)
            _absorb(graph_module, named, node, source, ConvActivation(conv, post_op))
    graph_module.graph.lint()
    graph_module.recompile()


def fuses(dtype: torch.dtype) -> bool:
    """Whether activations are fused into ``dtype`` convolutions on this CPU (its own probe
    per dtype, see :mod:`camkit.engine.accel.hardware`)."""
    caps = capabilities("cpu")
    if dtype == torch.bfloat16:
        return caps.fused_bf16
    return caps.fused_fp32 and dtype == torch.float32


def _replace_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
