"""Graph rewrites of a traced model copy: batch norms folded into convolutions, activations
run as oneDNN post-ops of the convolution before them, global average pools through a faster
kernel. Each rewrite computes what the graph computed (to float rounding); they are applied
by :func:`camkit.engine.accel.inference.inference_copy`.
"""

from __future__ import annotations

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


def fold_batch_norms(graph_module: fx.GraphModule) -> None:
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


def replace_global_pools(graph_module: fx.GraphModule) -> None:
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


def fuse_activations(graph_module: fx.GraphModule) -> None:
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
