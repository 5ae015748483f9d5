"""Helpers of the robustness tests: hook inspection and an independent capture reference.

The reference capture is deliberately separate from camkit's: its own forward hook, its own
``torch.autograd.grad`` call, and the caller's hand-written reshape of the raw layer output, so
comparing against it tests camkit's hooks and layout handling rather than restating them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

import camkit

Reader = Callable[[Tensor], Tensor]


def hooks_on(model: nn.Module) -> list[str]:
    """Every hook left on ``model``'s modules, plus torch's global module hooks."""
    found = [
        f"{name or '<model>'}.{attr}"
        for name, module in model.named_modules()
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
        if getattr(module, attr)
    ]
    found += [
        attr
        for attr in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
        if getattr(torch_module, attr)
    ]
    return found


def reference_capture(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    score: Callable[[Tensor], Tensor],
    read: Reader,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(activations, gradients, scores)`` of ``module`` on ``x``, read into ``(B, C, ...)``.

    ``score(output) -> (B,)`` picks the explained scores; gradients are d(sum of them)/d(the
    module's output at its last call), taken before later in-place ops can touch it.
    """
    leaves: list[Tensor] = []

    def hook(_m: nn.Module, _i: object, out: object) -> object:
        raw = out[0] if isinstance(out, tuple) else out
        assert isinstance(raw, Tensor)
        leaf = raw.detach().clone().requires_grad_(True)
        leaves.append(leaf)
        # Hand the model a non-leaf copy so its in-place ops cannot reach the leaf.
        passed = leaf * 1
        return passed if isinstance(out, Tensor) else (passed, *out[1:])

    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            output = model(x)
            scores = output if isinstance(output, Tensor) else output["out"]
            (grad,) = torch.autograd.grad(score(scores).sum(), leaves[-1])
    finally:
        handle.remove()
    return read(leaves[-1].detach()), read(grad), scores.detach()


def normalized_upsampled(maps: Tensor, size: tuple[int, ...]) -> Tensor:
    """Per-map min-max normalization, then bilinear/trilinear upsampling: the reference
    post-processing of a ``(B, h, w)`` or ``(B, t, h, w)`` map."""
    out = []
    for m in maps:
        span = m.max() - m.min()
        out.append((m - m.min()) / span if span > 0 else torch.zeros_like(m))
    mode = "bilinear" if len(size) == 2 else "trilinear"
    stacked = torch.stack(out).unsqueeze(1)
    return F.interpolate(stacked, size=size, mode=mode, align_corners=False).squeeze(1)


class MaskedScores(camkit.Method):
    """A test method that exercises the engine's scoring service: channel ``k``'s weight is the
    raw target score of the input times channel ``k``'s min-max normalized activation."""

    name = "masked-scores"

    class Config(camkit.MethodConfig):
        batch_size: int = 32

    def weights(self, ctx: camkit.Context) -> Tensor:
        spatial = tuple(range(2, ctx.activations.dim()))
        lo = ctx.activations.amin(spatial, keepdim=True)
        span = ctx.activations.amax(spatial, keepdim=True) - lo
        return ctx.score((ctx.activations - lo) / torch.where(span > 0, span, 1))


def masked_scores_reference(
    model: nn.Module, x: Tensor, acts: Tensor, target: Callable[[Tensor, Tensor], Tensor]
) -> Tensor:
    """``(B, h, w)`` map of :class:`MaskedScores`, one forward per image and channel."""
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    maps = []
    for b in range(x.shape[0]):
        weights = []
        for a in acts[b]:
            span = a.max() - a.min()
            mask = (a - a.min()) / span if span > 0 else torch.zeros_like(a)
            up = F.interpolate(mask[None, None], size=x.shape[2:], mode=mode, align_corners=False)
            with torch.no_grad():
                out = model(x[b : b + 1] * up[0])
            out = out if isinstance(out, Tensor) else out["out"]
            weights.append(target(out, torch.tensor([b]))[0])
        maps.append(torch.relu(torch.einsum("c,c...->...", torch.stack(weights), acts[b])))
    return torch.stack(maps)
