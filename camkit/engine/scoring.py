"""The masked scoring pass: target scores of many perturbed copies of the input, in chunks.

Perturbation methods (the Score-CAM family) need one forward pass per mask, so their cost
is that of the forward passes, and the pass spends as little as it can beside
them. Its rules:

- it never builds all ``B x M`` perturbed inputs: it walks the masks in chunks of the run
  option ``batch_size`` (the services' one chunk loop), upsampling each chunk's masks only
  when it is forwarded, so memory is bounded by ``batch_size`` inputs plus the
  low-resolution masks;
- the buffers a chunk is built in are allocated once per call and reused by every chunk;
- identical masks of one image (e.g. constant channels, whose normalized map is all zeros)
  are forwarded once;
- forwards run under ``torch.inference_mode()``;
- image inputs of convolutional models are forwarded in channels-last layout, which the
  CPU's convolution kernels run faster; the model itself is never converted (its weights
  stay as they are), and a model that rejects channels-last inputs (e.g. one that calls
  ``.view`` on its features) gets contiguous ones instead (the services' one fallback);
- masks are upsampled as two small matrix products (``Wy @ m @ Wx^T``), the interpolation
  matrices of :func:`camkit.engine.maps.resize`;
- ``precision="bf16"`` forwards bfloat16 inputs through a bfloat16 inference copy of the
  model (:func:`camkit.engine.accel.inference.inference_copy`: batch norms folded, activations
  fused into the convolutions), with the masked inputs built in bfloat16; a model that
  cannot be copied faithfully (train mode, forward hooks, a forward that does not trace) is
  forwarded under bfloat16 autocast (CPU or CUDA) instead, with masks built in float32.
  Faster where the hardware has bfloat16 units, at a small cost in fidelity. Noise is drawn
  in float32 in both modes, and scores are computed in float32.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from camkit.engine.maps import interpolation_matrix
from camkit.errors import PluginError

if TYPE_CHECKING:
    from torch import nn

    from camkit.engine.accel import ForwardPlan
    from camkit.engine.services import Services


def score_masks(
    door: Services,
    masks: Tensor,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Target scores ``(B, M)`` of the inputs multiplied by ``(B, M, *spatial)`` masks.

    Each mask is upsampled (bilinear, or trilinear for videos) to the input size, given
    ``noise_std`` Gaussian noise drawn from ``generator`` (one draw per mask, in mask order,
    so the result does not depend on ``batch_size``), and multiplied into its own image.
    """
    inputs = door.inputs
    batch, spatial = inputs.shape[0], tuple(inputs.shape[2:])
    if masks.dim() != 2 + len(spatial) or masks.shape[0] != batch:
        raise PluginError(
            f"score() needs masks of shape (B={batch}, M, *spatial) with "
            f"{len(spatial)} spatial dims, got {tuple(masks.shape)}"
        )
    masks = masks.detach().to(inputs.device, inputs.dtype)
    count = masks.shape[1]
    if count == 0:
        return torch.empty((batch, 0), device=inputs.device, dtype=torch.float32)
    flat = masks.reshape(batch * count, *masks.shape[2:])
    if noise_std > 0:
        todo, inverse = torch.arange(flat.shape[0], device=flat.device), None
    else:
        todo, inverse = _distinct(flat, batch, count)
    scores = torch.empty(todo.numel(), device=inputs.device, dtype=torch.float32)
    _score_all(door, flat, todo, count, scores, noise_std, generator)
    result = scores if inverse is None else scores[inverse]
    return result.reshape(batch, count)


def _score_all(
    door: Services,
    flat: Tensor,
    todo: Tensor,
    count: int,
    scores: Tensor,
    noise_std: float,
    generator: torch.Generator | None,
) -> None:
    """Fill ``scores[i]`` with the score of mask ``flat[todo[i]]``, chunk by chunk."""
    inputs = door.inputs
    spatial = tuple(inputs.shape[2:])
    plan = door.accel.scoring(inputs, rows=todo.numel())
    channels_last, model = plan.channels_last, plan.model
    copied = plan.dtype != inputs.dtype
    size = min(door.options.batch_size, todo.numel())
    # With the bfloat16 copy, masks are built in bfloat16 and NCHW layout (products
    # vectorize along rows there), then one copy lays each chunk out channels-last.
    work = plan.dtype
    mask_layout = channels_last and not copied
    flat = flat.to(work)
    low = torch.empty((size, *flat.shape[1:]), device=flat.device, dtype=work)
    up = torch.empty((size, *spatial), device=inputs.device, dtype=work)
    # Noise is drawn in float32 whatever the precision: the same draws as exact mode; a
    # bfloat16 copy of it is added (a mixed-dtype sum is 10x slower on CPU).
    noise = torch.empty_like(up, dtype=inputs.dtype) if noise_std > 0 else None
    noise_work = None if noise is None or work == noise.dtype else torch.empty_like(up)
    perturbed = torch.empty(
        (size, *inputs.shape[1:]),
        device=inputs.device,
        dtype=work,
        memory_format=torch.channels_last if mask_layout else torch.contiguous_format,
    )
    staged = (
        torch.empty_like(perturbed, memory_format=torch.channels_last)
        if copied and channels_last
        else None
    )
    source = inputs.to(work)
    if mask_layout:
        source = source.contiguous(memory_format=torch.channels_last)
    image = todo // count
    # Chunks are split into runs of one image on the host, once, so filling a chunk
    # needs no gather of input copies and no device synchronization.
    image_host = image.cpu()
    with door.inference(plan):
        for start, stop in door.chunks(todo.numel(), "scoring"):
            n = stop - start
            torch.index_select(flat, 0, todo[start:stop], out=low[:n])
            _upsample(low[:n], up[:n])
            if noise is not None:
                for row in noise[:n]:
                    torch.randn(row.shape, generator=generator, out=row)
                drawn = noise[:n] if noise_work is None else noise_work[:n].copy_(noise[:n])
                up[:n].add_(drawn, alpha=noise_std)
            images, runs = torch.unique_consecutive(image_host[start:stop], return_counts=True)
            offset = 0
            for b, run in zip(images.tolist(), runs.tolist()):
                rows = slice(offset, offset + run)
                torch.mul(up[rows].unsqueeze(1), source[b], out=perturbed[rows])
                offset += run
            batch_in = perturbed[:n] if staged is None else staged[:n].copy_(perturbed[:n])
            began = time.perf_counter()
            out, laid_out = door.run(model, batch_in, channels_last)
            if laid_out != channels_last:  # the model rejected channels-last: keep to that
                channels_last, staged, perturbed = False, None, perturbed.contiguous()
            scores[start:stop] = door.target_scores(out, image[start:stop])
            if plan.provisional and stop < todo.numel():
                plan, model = _replan(door, plan, todo.numel() - stop, began, n)


def _replan(
    door: Services, plan: ForwardPlan, rows: int, began: float, n: int
) -> tuple[ForwardPlan, nn.Module]:
    """``precision="auto"`` chose before knowing what a forward costs: with the first
    chunk's time, the plan for the ``rows`` left (a copy only where they win its cost back);
    kept only where it takes the same inputs (dtype, autocast)."""
    row_s = (time.perf_counter() - began) / n
    new = door.accel.scoring(door.inputs, rows=rows, row_s=row_s)
    if new.dtype != plan.dtype or new.autocast != plan.autocast:
        return replace(plan, provisional=False), plan.model
    return new, new.model


def _upsample(masks: Tensor, out: Tensor) -> None:
    """Resize ``(n, *low)`` masks into ``out`` ``(n, *spatial)`` in place, bilinearly (or
    trilinearly for videos), equal to :func:`camkit.engine.maps.resize` to float rounding.

    2-D masks are resized as ``Wy @ m @ Wx^T`` with the interpolation matrices ``resize``
    uses (5x faster than the interpolation kernel for 7 x 7 -> 224 x 224 on a CPU).
    """
    if masks.shape[1:] == out.shape[1:]:
        out.copy_(masks)
    elif masks.dim() == 3:
        rows = interpolation_matrix(masks.shape[1], out.shape[1], masks.dtype, masks.device)
        cols = interpolation_matrix(masks.shape[2], out.shape[2], masks.dtype, masks.device)
        with torch.autocast(out.device.type, enabled=False):  # in the masks' own dtype
            torch.matmul(rows, torch.matmul(masks, cols.T), out=out)
    else:
        torch.ops.aten.upsample_trilinear3d.out(
            masks.unsqueeze(1), list(out.shape[1:]), False, None, None, None, out=out.unsqueeze(1)
        )


def _distinct(flat: Tensor, batch: int, count: int) -> tuple[Tensor, Tensor]:
    """Indices of the first of each group of identical masks of one image, and for every
    mask the position of its group's representative in that list.

    ``flat`` holds ``batch * count`` masks, ``count`` per image, image by image.
    """
    keep: list[Tensor] = []
    inverse = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    offset = 0
    for b in range(batch):
        rows = flat[b * count : (b + 1) * count].reshape(count, -1)
        _, inv = torch.unique(rows, dim=0, return_inverse=True)
        groups = int(inv.max()) + 1
        first = torch.full((groups,), count, dtype=torch.long, device=flat.device)
        first.scatter_reduce_(0, inv, torch.arange(count, device=flat.device), reduce="amin")
        # Keep representatives in mask order so scoring order does not depend on sorting.
        order = torch.argsort(first)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(groups, device=flat.device)
        keep.append(first[order] + b * count)
        inverse[b * count : (b + 1) * count] = rank[inv] + offset
        offset += groups
    return torch.cat(keep), inverse
