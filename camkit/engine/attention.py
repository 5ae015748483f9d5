"""The attention pass: the attention probabilities of a ViT's blocks and, for each block, the
gradient of that block's own target score with respect to them (LeGrad's input).

Which blocks: every module at or inside the target layer that has a self-attention child
camkit can read: :class:`torch.nn.MultiheadAttention` (torchvision's ``VisionTransformer``,
batch first, one input projection) or timm's ``Attention`` (``qkv``, ``attn_drop``,
``fused_attn``). The layer can be one block (``encoder.layers.encoder_layer_11``, ``blocks.11``)
or the stack of them (``encoder.layers``, ``blocks``).

How the probabilities :math:`P = softmax(q k^T / \\sqrt{d})` are read without changing the
model, for this pass only (removed on exit, also when the model raises):

- ``nn.MultiheadAttention`` is called with ``need_weights=False`` by torchvision, and the
  weights it can return are not the tensor its output is computed from. A forward hook
  therefore recomputes the module's output from its input (its input projection, the
  softmax, ``P v`` and its output projection: the same function, to float rounding) and
  hands that to the rest of the model, so the block's output is a function of the ``P`` camkit
  holds. Masks, added key/value biases and active attention dropout raise ``LayerError``.
- timm's ``Attention`` computes ``P`` only on its unfused path (fused scaled-dot-product
  attention never forms it), so ``fused_attn`` is set to ``False`` for the pass and
  restored afterwards, and a hook on ``attn_drop`` (which receives ``P``) records it.
  The unfused path is timm's own code for the same function; a concurrent call on the same
  model from another thread would run it too (with the same result to float rounding).

Each block's score is the model's head on the mean of the block's output tokens, after the
model's final norm (as in LeGrad's reference code): ``heads(encoder.ln(mean))`` for
torchvision, ``head(fc_norm(norm(mean)))`` for timm. Other models (any whose blocks have a
self-attention child camkit reads) need a ``project`` callable: a block's ``(B, N, D)`` output
tokens to ``(B, K)`` class scores; without one they raise ``LayerError``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camkit.engine.capture import Capture, grad_enabled
from camkit.errors import ConfigError, GradientError, LayerError

if TYPE_CHECKING:
    from camkit.engine.services import Services

SUPPORTED = (
    "torch.nn.MultiheadAttention (torchvision VisionTransformer) or timm's Attention "
    "(timm VisionTransformer)"
)


def _is_timm_attention(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("qkv", "num_heads", "fused_attn")) and isinstance(
        getattr(m, "attn_drop", None), nn.Dropout
    )


def _attention_of(block: nn.Module) -> nn.Module | None:
    for child in block.children():
        if isinstance(child, nn.MultiheadAttention) or _is_timm_attention(child):
            return child
    return None


def attention_blocks(
    model: nn.Module, layer: str, module: nn.Module
) -> list[tuple[str, nn.Module]]:
    """``[(name, block)]`` the attention blocks at or inside ``module``, in model order."""
    names = {id(m): n for n, m in model.named_modules()}
    blocks = [(names.get(id(m), layer), m) for m in module.modules() if _attention_of(m)]
    if not blocks:
        raise LayerError(
            f"layer {layer!r} holds no attention block camkit can read; choose a transformer "
            f"block (or the stack of them) whose self-attention is {SUPPORTED}"
        )
    return blocks


def block_head(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's classifier on a block's ``(B, N, D)`` tokens: head(norm(mean of tokens))."""
    encoder, heads = getattr(model, "encoder", None), getattr(model, "heads", None)
    if isinstance(getattr(encoder, "ln", None), nn.Module) and isinstance(heads, nn.Module):
        assert encoder is not None
        return lambda z: heads(encoder.ln(z.mean(1)))
    parts = [getattr(model, a, None) for a in ("norm", "fc_norm", "head_drop", "head")]
    if all(isinstance(p, nn.Module) for p in parts) and getattr(model, "attn_pool", None) is None:
        tail = nn.Sequential(*[p for p in parts if isinstance(p, nn.Module)])
        return lambda z: tail(z.mean(1))
    raise LayerError(
        f"camkit reads per-block class scores of torchvision's and timm's VisionTransformer "
        f"only (a final norm and a classifier head), not of {type(model).__name__}"
    )


class AttentionTap:
    """For one forward: hooks that record each attention module's probabilities ``P``."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.probs: list[Tensor | None] = [None] * len(modules)
        self._thread = threading.get_ident()
        self._handles: list[Any] = []
        self._fused: list[tuple[nn.Module, Any]] = []

    def __enter__(self) -> AttentionTap:
        try:
            for i, m in enumerate(self.modules):
                if isinstance(m, nn.MultiheadAttention):
                    _check_mha(m)
                    hook = self._replay(i)
                    self._handles.append(m.register_forward_hook(hook, with_kwargs=True))
                else:
                    timm: Any = m  # timm's Attention: fused_attn, attn_drop
                    self._fused.append((m, timm.fused_attn))
                    timm.fused_attn = False
                    self._handles.append(timm.attn_drop.register_forward_hook(self._record(i)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        for m, fused in self._fused:
            m.fused_attn = fused
        self._handles.clear()
        self._fused.clear()

    def clear(self) -> None:
        self.probs = [None] * len(self.modules)

    def _keep(self, i: int, p: Tensor) -> Tensor:
        # Without a graph up to here (frozen model), start one at P.
        p = p if p.requires_grad else p.detach().requires_grad_(True)
        self.probs[i] = p
        return p

    def _record(self, i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, _inputs: Any, output: Tensor) -> Any:
            if threading.get_ident() != self._thread:
                return None
            if module.training and getattr(module, "p", 0.0) > 0:
                raise LayerError("LeGrad cannot read attention under active attention dropout")
            return self._keep(i, output)

        return hook

    def _replay(self, i: int) -> Callable[..., Any]:
        def hook(m: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
            if threading.get_ident() != self._thread:
                return None
            bound = dict(zip(_MHA_ARGS, args)) | kwargs
            x = bound.get("query")
            extra = [bound.get(k) for k in ("key_padding_mask", "attn_mask")]
            if not (bound.get("key") is x and bound.get("value") is x and x is not None):
                raise LayerError("camkit reads self-attention only (query, key, value the same)")
            if any(e is not None for e in extra) or bound.get("is_causal") or x.dim() != 3:
                raise LayerError("camkit reads unmasked (B, N, D) self-attention only")
            b, n, d = x.shape
            heads = m.num_heads
            qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias).view(b, n, 3, heads, d // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            p = self._keep(i, (q @ k.transpose(-2, -1) / math.sqrt(d // heads)).softmax(-1))
            out = m.out_proj((p @ v).transpose(1, 2).reshape(b, n, d))
            return (out, output[1]) if isinstance(output, tuple) else out

        return hook


#: ``nn.MultiheadAttention.forward``'s parameters, in order (callers may pass any positionally).
_MHA_ARGS: tuple[str, ...] = ("query", "key", "value", "key_padding_mask", "need_weights")
_MHA_ARGS += ("attn_mask", "average_attn_weights", "is_causal")


def check_layout(model: nn.Module, layer: str, module: nn.Module) -> None:
    """Raise :class:`LayerError` unless camkit can read the attention of every block at or
    inside ``module`` (its kind and layout; the mode, e.g. active dropout, is checked when
    the attention is read)."""
    for _, block in attention_blocks(model, layer, module):
        attention = _attention_of(block)
        if isinstance(attention, nn.MultiheadAttention):
            _check_mha_layout(attention)


def _check_mha_layout(m: nn.MultiheadAttention) -> None:
    if not m.batch_first or not m._qkv_same_embed_dim or m.in_proj_weight is None:
        raise LayerError("camkit reads batch-first MultiheadAttention with one input projection")
    if m.bias_k is not None or m.add_zero_attn:
        raise LayerError("camkit cannot read attention with added keys")


def _check_mha(m: nn.MultiheadAttention) -> None:
    _check_mha_layout(m)
    if m.training and m.dropout > 0:
        raise LayerError("camkit cannot read attention under active attention dropout")


def checked(project: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A user's score projection, its output checked to be ``(B, K)`` scores."""

    def head(tokens: Tensor) -> Tensor:
        scores = project(tokens)
        if not isinstance(scores, Tensor) or scores.dim() != 2 or len(scores) != len(tokens):
            got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ConfigError(
                f"score_projection must map (B, N, D) tokens to (B, classes) scores; it "
                f"returned {got} for tokens of shape {tuple(tokens.shape)}"
            )
        return scores

    return head


def attention_gradients(
    door: Services,
    layer: str,
    last: int | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """For each attention block at or inside ``layer`` (the ``last`` ones when given):
    ``(P, dP)``, both ``(B, heads, N, N)``: the block's attention probabilities and the
    gradient of its own target score by them: ``project`` (default: the model's head on its
    mean output token) of the block's output tokens."""
    door.before_pass()
    blocks = attention_blocks(door.model, layer, door.layers[layer])
    blocks = blocks[-last:] if last else blocks
    head, x = block_head(door.model) if project is None else checked(project), door.inputs
    probs: list[list[Tensor]] = [[] for _ in blocks]
    grads: list[list[Tensor]] = [[] for _ in blocks]
    for start, stop in door.chunks(x.shape[0], f"{layer} attention gradients"):
        chunk = x[start:stop].detach()
        index = torch.arange(start, stop, device=chunk.device)
        capture = Capture(blocks, gradients=True)
        tap = AttentionTap([_attention_of(m) for _, m in blocks])  # type: ignore[misc]

        def restart(capture: Capture = capture, tap: AttentionTap = tap) -> None:
            capture.restart()
            tap.clear()

        layout = door.accel.explain_channels_last(chunk)  # before any hook (may be measured)
        with grad_enabled():
            with capture, tap:
                door.run(door.model, chunk, layout, restart=restart)
            capture.check_ran()
            capture.check_finite()
            for i, (name, _) in enumerate(blocks):
                p, tokens = tap.probs[i], capture.activations[name]
                if p is None or tokens.dim() != 3:
                    raise LayerError(
                        f"block {name!r} did not run its attention on (B, N, D) tokens"
                    )
                score = door.chosen.score(head(tokens), index).sum()
                (g,) = torch.autograd.grad(score, p, retain_graph=True, allow_unused=True)
                if g is None or not bool(torch.isfinite(g).all()):
                    raise GradientError(
                        f"no finite gradient of block {name!r}'s score by its attention"
                    )
                probs[i].append(p.detach())
                grads[i].append(g)
    return [(torch.cat(p), torch.cat(g)) for p, g in zip(probs, grads)]
