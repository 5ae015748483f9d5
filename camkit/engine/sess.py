"""SESS, Saliency Enhancing with Scaling and Sliding (Tursun, Denman, Sridharan and Fookes,
ECCV 2022): any method run over square windows slid across the input resized to several
scales, the windows' maps weighted by their window's target score, pasted back and fused (the
``sess`` run option).

For an input of ``H x W`` and window size ``s`` (by default ``min(H, W)``), each scale ``S``
resizes the input so its shorter side is ``S`` (bilinear); windows of ``s x s`` slide over it
with stride ``step`` (by default ``s``; a window crossing the border is moved back inside).
Window ``p``'s weight is its target score ``c_p`` (the softmax probability by default, clipped
at 0) over the highest one; the ``pre_filter_ratio`` lowest-scoring windows are dropped. Each
kept window's map ``M_p`` (the base method's, in ``[0, 1]``) times its weight is pasted into a
zero canvas of its scaled image, which is resized (bilinear) to ``H x W``: ``P_p``. Fusion:

    mean:  F(x) = sum_p [P_p(x) > theta] P_p(x) / sum_p [P_p(x) > theta]   (0 where no term)
    max:   F(x) = max_p P_p(x)

then an 11 x 11 Gaussian blur (sigma 5, borders reflected) when ``smooth``, and min-max
normalization per image. The defaults are pytorch-grad-cam 1.5.7's ``SESS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from camkit.engine.maps import interpolation_matrix
from camkit.engine.outputs import scores_of
from camkit.engine.smoothing import gaussian_blur
from camkit.engine.targeting import resolve_targets
from camkit.errors import ConfigError
from camkit.method import minmax_normalize
from camkit.targets import Targets

#: The base method's maps of a batch of windows for one target: ``(n, s, s)`` in ``[0, 1]``.
WindowMaps = Callable[[Tensor, Targets], Tensor]
#: The target scores of a batch of windows of one image: ``(n,)``.
WindowScores = Callable[[Tensor], Tensor]


class SESSOptions(BaseModel):
    """The parameters of SESS (the ``sess`` run option; ``sess=True`` takes these defaults).

    Example:
        >>> cam = camkit.create("gradcam", model, "layer4", sess={"num_scales": 4, "pool": "max"})
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scales: tuple[int, ...] | None = Field(
        None,
        min_length=1,
        description="sizes the input's shorter side is resized to (each at least the window "
        "size); None: num_scales sizes from the window size, growing by scale_step_ratio x "
        "window size",
    )
    num_scales: int = Field(12, ge=1, strict=True, description="number of scales (scales=None)")
    scale_step_ratio: float = Field(
        2.0 / 7.0, gt=0, description="step between scales, as a fraction of the window size"
    )
    window_size: int | None = Field(
        None, gt=0, strict=True, description="side of the square windows (None: min(H, W))"
    )
    step_size: int | None = Field(
        None, gt=0, strict=True, description="stride of the windows (None: the window size)"
    )
    pre_filter_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of the lowest-scoring windows dropped"
    )
    theta: float = Field(
        0.0, description="'mean' fusion: pasted values at or below theta are left out"
    )
    pool: Literal["mean", "max"] = Field("mean", description="fusion of the pasted maps")
    smooth: bool = Field(True, strict=True, description="Gaussian blur of the fused map")
    use_softmax_scores: bool = Field(
        True,
        strict=True,
        description="weight windows by the target's softmax probability (False: the raw "
        "target score, clipped at 0)",
    )

    @model_validator(mode="after")
    def _positive_scales(self) -> SESSOptions:
        if self.scales is not None and min(self.scales) < 1:
            raise ValueError(f"scales must be positive sizes, got {list(self.scales)}")
        return self


def scales_of(opts: SESSOptions, window: int) -> list[int]:
    """The sizes of the input's shorter side, one per scale."""
    if opts.scales is not None:
        return list(opts.scales)
    step = round(window * opts.scale_step_ratio)
    return [window + step * i for i in range(opts.num_scales)]


def starts(length: int, step: int, window: int) -> list[int]:
    """Window starts along an axis; the last window is moved back inside the border."""
    out = []
    for start in range(0, length, step):
        if start + window >= length:
            out.append(max(length - window, 0))
            break
        out.append(start)
    return out


def scaled_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``short`` (the longer one rounded down)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def windows(image: Tensor, opts: SESSOptions, window: int, step: int) -> list[tuple[Tensor, tuple]]:
    """``[(window (1, C, s, s), (y, x, scaled h, scaled w))]`` of one ``(1, C, H, W)`` image."""
    height, width = image.shape[-2:]
    out = []
    for short in scales_of(opts, window):
        if short < window:
            raise ConfigError(
                f"sess.scales: every scale must be at least the window size {window}, got {short}"
            )
        size = scaled_size(height, width, short)
        scaled = F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True
        )
        for y in starts(size[0], step, window):
            for x in starts(size[1], step, window):
                out.append((scaled[..., y : y + window, x : x + window], (y, x, *size)))
    return out


def sess_map(
    image: Tensor,
    target: Targets,
    opts: SESSOptions,
    base: WindowMaps,
    score: WindowScores,
    batch_size: int,
) -> Tensor:
    """The SESS fusion ``(H, W)`` of one ``(1, C, H, W)`` image (blurred, not normalized)."""
    height, width = image.shape[-2:]
    window = opts.window_size if opts.window_size is not None else min(height, width)
    step = opts.step_size if opts.step_size is not None else window
    if window > min(height, width) and opts.scales is None:
        raise ConfigError(
            f"sess.window_size: the window ({window}) is larger than the input ({height}x{width})"
        )
    found = windows(image, opts, window, step)
    patches = torch.cat([p for p, _ in found])
    scores = torch.cat(
        [score(patches[i : i + batch_size]) for i in range(0, len(found), batch_size)]
    )
    scores = scores.float().clamp(min=0).cpu()
    order = torch.argsort(scores, stable=True)[int(len(found) * opts.pre_filter_ratio) :]
    top = scores[order[-1]]
    weights = scores[order] / top if top > 0 else torch.ones(len(order))
    total = image.new_zeros((height, width), dtype=torch.float32)
    counts = torch.zeros_like(total)
    for i in range(0, len(order), batch_size):
        index = order[i : i + batch_size]
        maps = base(patches[index], target).float()
        for cam, weight, p in zip(maps, weights[i : i + batch_size].tolist(), index.tolist()):
            pasted = paste(cam * weight, found[p][1], (height, width))
            if opts.pool == "max":
                torch.maximum(total, pasted, out=total)
            else:
                keep = pasted > opts.theta
                total += torch.where(keep, pasted, 0.0)
                counts += keep
    fused = (
        total if opts.pool == "max" else torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
    )
    return gaussian_blur(fused) if opts.smooth else fused


def paste(cam: Tensor, where: tuple, size: tuple[int, int]) -> Tensor:
    """A window's map placed in a zero canvas of its scaled image, resized (bilinear,
    ``align_corners=False``) to ``size``: ``Ry[:, y:y+s] @ cam @ Rx[:, x:x+s]^T``."""
    y, x, scaled_h, scaled_w = where
    rows = interpolation_matrix(scaled_h, size[0], cam.dtype, cam.device)[:, y : y + cam.shape[0]]
    cols = interpolation_matrix(scaled_w, size[1], cam.dtype, cam.device)[:, x : x + cam.shape[1]]
    return rows @ cam @ cols.T


def explain_sess(
    model: Callable[[Tensor], object],
    x: Tensor,
    targets: Targets,
    opts: SESSOptions,
    base: WindowMaps,
    batch_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SESS over a batch, image by image: ``(scores, target indices, fused, maps)``.

    The targets are resolved on the whole input (``None``: each image's predicted class);
    the window scores come from plain forwards of ``batch_size`` windows under inference
    mode, and ``base`` gives the windows' maps, ``batch_size`` windows per call.
    """
    if x.dim() != 4:
        raise ConfigError(
            f"sess explains (B, C, H, W) images, got an input of shape {tuple(x.shape)}"
        )
    with torch.inference_mode():
        scores = scores_of(model(x)).detach()
    chosen = resolve_targets(targets, scores)

    def window_target(i: int) -> Targets:
        if int(chosen.indices[i]) >= 0:
            return int(chosen.indices[i])
        return lambda rows, index: chosen.raw(rows, torch.full_like(index, i))

    def window_scores(i: int) -> WindowScores:
        def score(patches: Tensor) -> Tensor:
            with torch.inference_mode():
                out = scores_of(model(patches)).float()
                if opts.use_softmax_scores:
                    out = out.softmax(-1)
                index = torch.full((patches.shape[0],), i, dtype=torch.long, device=out.device)
                return chosen.raw(out, index).clone()

        return score

    fused = torch.stack(
        [
            sess_map(x[i : i + 1], window_target(i), opts, base, window_scores(i), batch_size)
            for i in range(x.shape[0])
        ]
    )
    return scores, chosen.indices, fused, minmax_normalize(fused, 2)
