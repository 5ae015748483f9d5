"""Adapting what models return: score tensors out of outputs, feature maps out of layers."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from camkit.errors import ConfigError, LayerError, ModelOutputError

Layout = Literal["auto", "nchw", "nhwc", "tokens"]

_SCORE_KEYS = ("logits", "out", "scores", "output", "pred")


#: Columns of one detection row in the tensor :func:`detections_tensor` packs.
DETECTION_COLUMNS = ("x1", "y1", "x2", "y2", "score", "label")


def scores_of(output: Any) -> Tensor:
    """The score tensor in a model output: a tensor, the first tensor of a tuple/list, a
    ``logits``/``out`` entry of a dict, a ``.logits`` attribute, or the detections of a
    detector's list of per-image dicts, packed by :func:`detections_tensor`."""
    if isinstance(output, Tensor):
        return output
    if _is_detections(output):
        return detections_tensor(output)
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


def _is_detections(output: Any) -> bool:
    return (
        isinstance(output, (list, tuple))
        and len(output) > 0
        and all(
            isinstance(item, Mapping)
            and isinstance(item.get("boxes"), Tensor)
            and isinstance(item.get("scores"), Tensor)
            for item in output
        )
    )


def detections_tensor(detections: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """Pack a detector's per-image detections into one ``(B, M, 6)`` score tensor.

    Detectors such as torchvision's return one dict per image with ``boxes`` ``(n_i, 4)``
    (``x1, y1, x2, y2``), ``scores`` ``(n_i,)`` and ``labels`` ``(n_i,)``, with ``n_i`` varying
    per image. Row ``j`` of image ``b`` becomes ``[x1, y1, x2, y2, score, label]``
    (:data:`DETECTION_COLUMNS`); ``M`` is the largest ``n_i``, and the rows that pad the other
    images have label ``-1`` and score 0. Boxes and scores keep their autograd graph, so
    gradient methods can explain a target computed from them (see
    :class:`camkit.targets.DetectionTarget`). A dict without ``labels`` gets label 0.

    Example:
        >>> out = [{"boxes": torch.tensor([[0.0, 0, 4, 4]]), "scores": torch.tensor([0.9]),
        ...         "labels": torch.tensor([3])}, {"boxes": torch.zeros(0, 4),
        ...         "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
        >>> detections_tensor(out)[:, :, 4:]
        tensor([[[ 0.9000,  3.0000]],
        <BLANKLINE>
                [[ 0.0000, -1.0000]]])
    """
    rows = max(len(d["scores"]) for d in detections)
    packed = []
    for d in detections:
        boxes, scores = d["boxes"], d["scores"]
        labels = d.get("labels")
        if labels is None:
            labels = torch.zeros_like(scores)
        found = torch.cat([boxes, scores[:, None], labels[:, None].to(scores.dtype)], 1)
        pad = found.new_zeros(rows - found.shape[0], len(DETECTION_COLUMNS))
        pad[:, -1] = -1
        packed.append(torch.cat([found, pad]))
    return torch.stack(packed)


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


def check_layout(layout: object, grid: object) -> None:
    """Validate the ``layout`` and ``grid`` options of an extractor (:class:`ConfigError`)."""
    if layout not in get_args(Layout):
        raise ConfigError(f"layout must be one of {list(get_args(Layout))}, got {layout!r}")
    if grid is not None and not (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in grid)
    ):
        raise ConfigError(f"grid must be (h, w), two positive ints, got {grid!r}")


def to_channels_first(
    t: Tensor,
    layout: Layout = "auto",
    grid: tuple[int, int] | None = None,
    input_size: Sequence[int] | None = None,
    layer: str = "",
) -> Tensor:
    """Reshape a layer output to ``(B, C, h, w)`` (or ``(B, C, t, h, w)``).

    - ``(B, N, D)`` tokens: the last ``h * w`` tokens form the grid, row-major; leading
      class/register tokens are dropped. The grid is ``grid`` when given, else the grid one
      patch stride cuts out of the input's ``(H, W)`` that leaves the fewest leading tokens
      (a stride dividing both sides first, then one that rounds; the largest square when the
      input size is unknown). Pass ``grid`` when more than a quarter of the tokens lead.
    - ``(B, H, W, C)`` channels-last maps (e.g. Swin) are permuted, and ``(B, T, H, W, C)``
      with ``layout="nhwc"``. With ``layout="auto"`` a 4-D output counts as channels-last
      when its last two sizes differ and its middle two match the input's aspect ratio
      better than its last two do (or, with no input size, when its middle two are equal).
    """
    if layout == "tokens" or (layout == "auto" and t.dim() == 3):
        return _tokens_to_grid(t, grid, input_size, layer)
    if t.dim() in (4, 5) and (
        layout == "nhwc" or (layout == "auto" and _looks_channels_last(t, input_size))
    ):
        return t.movedim(-1, 1)
    if t.dim() in (4, 5):
        return t
    raise LayerError(
        f"layer {layer!r} outputs shape {tuple(t.shape)}; camkit needs (B, C, h, w), "
        "(B, C, t, h, w), (B, h, w, C) or (B, N, D) tokens"
    )


def _tokens_to_grid(
    t: Tensor, grid: tuple[int, int] | None, input_size: Sequence[int] | None, layer: str
) -> Tensor:
    if t.dim() != 3:
        raise LayerError(f"layer {layer!r} outputs shape {tuple(t.shape)}, not (B, N, D) tokens")
    b, n, d = t.shape
    if grid is None:
        grid = _infer_grid(n, input_size, layer)
    h, w = grid
    if h * w > n or h * w == 0:
        raise LayerError(
            f"layer {layer!r} outputs {n} tokens, which do not hold a {h}x{w} grid; "
            "pass grid=(h, w)"
        )
    return t[:, n - h * w :, :].reshape(b, h, w, d).permute(0, 3, 1, 2)


def _infer_grid(n: int, input_size: Sequence[int] | None, layer: str) -> tuple[int, int]:
    if input_size is None:
        side = math.isqrt(n)
        return side, side
    if len(input_size) != 2:
        raise LayerError(
            f"layer {layer!r} outputs (B, N, D) tokens for a {len(input_size)}-D input; camkit "
            "reads tokens as the 2-D grid of an image only"
        )
    height, width = input_size
    # A patch stride that divides both sides is the usual case and the least ambiguous, so it
    # wins over a grid that needs rounding, even with more prefix tokens.
    for fits in (_divides, _rounds):
        grid = _fewest_prefix_grid(n, height, width, fits)
        if grid is not None:
            return grid
    raise LayerError(
        f"layer {layer!r} outputs {n} tokens, and no grid of them matches the input's "
        f"{height}x{width} pixels; pass grid=(h, w)"
    )


def _fewest_prefix_grid(
    n: int, height: int, width: int, fits: Callable[[int, int, int, int], bool]
) -> tuple[int, int] | None:
    """The ``(h, w)`` grid of the input that ``fits``, formed by the last tokens after the
    fewest prefix (class/register) tokens, which must number at most a quarter of the grid's."""
    for prefix in range(n):
        count = n - prefix
        if 4 * prefix > count:
            return None
        for a in range(1, math.isqrt(count) + 1):
            if count % a == 0:
                for h, w in ((a, count // a), (count // a, a)):
                    if fits(height, width, h, w):
                        return h, w
    return None


def _divides(height: int, width: int, h: int, w: int) -> bool:
    """Whether one stride cuts the input into exactly ``h x w`` patches."""
    return height % h == 0 and width % w == 0 and height // h == width // w


def _rounds(height: int, width: int, h: int, w: int) -> bool:
    """Whether one stride ``s`` gives an ``h x w`` grid, rounding both sides down
    (``floor(H / s)``, as strided convolutions do) or both up (as padding does)."""
    inf = math.inf
    floor = max(height / (h + 1), width / (w + 1)) < min(height / h, width / w)
    ceil = max(height / h, width / w) < min(
        height / (h - 1) if h > 1 else inf, width / (w - 1) if w > 1 else inf
    )
    return floor or ceil


def _looks_channels_last(t: Tensor, input_size: Sequence[int] | None) -> bool:
    if t.dim() != 4:
        return False
    _, s1, s2, s3 = t.shape
    if s2 == s3:
        return False
    if input_size is None or len(input_size) != 2:
        return s1 == s2
    ratio = math.log(input_size[0] / input_size[1])
    return abs(math.log(s1 / s2) - ratio) < abs(math.log(s2 / s3) - ratio)
