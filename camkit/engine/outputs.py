"""Adapting what models return: score tensors out of outputs, feature maps out of layers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from torch import Tensor

from camkit.errors import LayerError, ModelOutputError

Layout = Literal["auto", "nchw", "nhwc", "tokens"]

_SCORE_KEYS = ("logits", "out", "scores", "output", "pred")


def scores_of(output: Any) -> Tensor:
    """The score tensor in a model output: a tensor, the first tensor of a tuple/list, a
    ``logits``/``out`` entry of a dict, or a ``.logits`` attribute."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in _SCORE_KEYS:
            if isinstance(output.get(key), Tensor):
                return output[key]
        tensors = [v for v in output.values() if isinstance(v, Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ModelOutputError(
            f"the model returned a mapping with keys {list(output)}; camkit looks for one of "
            f"{list(_SCORE_KEYS)} or a single tensor value. Wrap the model so it returns logits."
        )
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Sequence) and not isinstance(output, str):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise ModelOutputError(
        f"cannot find scores in the model's output of type {type(output).__name__}: expected a "
        "tensor, a tuple/list starting with one, a dict with 'logits' or 'out', or an object "
        "with a .logits tensor"
    )


def layer_tensor(output: Any, layer: str) -> Tensor:
    """The tensor a layer produced (its output, or the first tensor of a tuple output)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise LayerError(
        f"layer {layer!r} returned {type(output).__name__}, not a tensor; choose a layer whose "
        "output is a feature map"
    )


def with_layer_tensor(output: Any, tensor: Tensor) -> Any:
    """``output`` with the tensor :func:`layer_tensor` reads from it replaced by ``tensor``
    (what a forward hook returns to hand the rest of the model a different tensor)."""
    if isinstance(output, Tensor):
        return tensor
    if isinstance(output, list):
        return type(output)([tensor, *output[1:]])
    return (tensor, *output[1:])


def to_channels_first(
    t: Tensor,
    layout: Layout = "auto",
    grid: tuple[int, int] | None = None,
    input_size: Sequence[int] | None = None,
    layer: str = "",
) -> Tensor:
    """Reshape a layer output to ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).

    - ``(B, N, D)`` tokens: the last ``h * w`` tokens form the grid (``grid``, else the
      largest square that fits); leading class/register tokens are dropped.
    - ``(B, H, W, C)`` channels-last maps (e.g. Swin) are permuted. With ``layout="auto"``
      a 4-D output counts as channels-last when its last two sizes differ and its middle two
      match the input's aspect ratio while the channels-first reading does not.
    """
    if layout == "tokens" or (layout == "auto" and t.dim() == 3):
        return _tokens_to_grid(t, grid, layer)
    if t.dim() == 4 and (
        layout == "nhwc" or (layout == "auto" and _looks_channels_last(t, input_size))
    ):
        return t.permute(0, 3, 1, 2)
    if t.dim() in (4, 5):
        return t
    raise LayerError(
        f"layer {layer!r} outputs shape {tuple(t.shape)}; camkit needs (B, C, h, w), "
        "(B, C, t, h, w), (B, h, w, C) or (B, N, D) tokens"
    )


def _tokens_to_grid(t: Tensor, grid: tuple[int, int] | None, layer: str) -> Tensor:
    if t.dim() != 3:
        raise LayerError(f"layer {layer!r} outputs shape {tuple(t.shape)}, not (B, N, D) tokens")
    b, n, d = t.shape
    if grid is None:
        side = math.isqrt(n)
        grid = (side, side)
    h, w = grid
    if h * w > n or h * w == 0:
        raise LayerError(
            f"layer {layer!r} outputs {n} tokens, which do not hold a {h}x{w} grid; "
            "pass grid=(h, w)"
        )
    return t[:, n - h * w :, :].reshape(b, h, w, d).permute(0, 3, 1, 2)


def _looks_channels_last(t: Tensor, input_size: Sequence[int] | None) -> bool:
    _, s1, s2, s3 = t.shape
    if s2 == s3:
        return False
    if s1 == s2:
        return True
    if input_size is None or len(input_size) != 2:
        return False
    ratio = input_size[0] / input_size[1]
    return abs(s1 / s2 - ratio) < abs(s2 / s3 - ratio)
