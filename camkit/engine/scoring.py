"""The scoring service: target scores of many perturbed copies of the input, in chunks.

Perturbation methods (the Score-CAM family, ablation) need one forward pass per mask. The
service never builds all ``B x M`` perturbed inputs: it walks the masks in chunks of
``batch_size``, upsampling each chunk's masks only when it is forwarded, so memory is bounded
by ``batch_size`` inputs plus the low-resolution masks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from camkit.engine.maps import resize
from camkit.engine.outputs import scores_of
from camkit.errors import CamkitError

#: Chunks of work after which a progress bar is worth showing (when ``progress=None``).
PROGRESS_AFTER = 8


class Scorer:
    """Forward ``mask * input`` for many masks and return the target score of each."""

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        score: Callable[[Tensor, Tensor], Tensor],
        *,
        batch_size: int = 32,
        progress: bool | None = None,
        desc: str = "scoring",
    ) -> None:
        self.model = model
        self.inputs = inputs.detach()
        self.score_rows = score
        self.batch_size = batch_size
        self.progress = progress
        self.desc = desc

    def __call__(
        self, masks: Tensor, *, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        batch, spatial = self.inputs.shape[0], self.inputs.shape[2:]
        if masks.dim() != 2 + len(spatial) or masks.shape[0] != batch:
            raise CamkitError(
                f"score() needs masks of shape (B={batch}, M, *spatial) with "
                f"{len(spatial)} spatial dims, got {tuple(masks.shape)}"
            )
        masks = masks.detach().to(self.inputs.device, self.inputs.dtype)
        count = masks.shape[1]
        flat = masks.reshape(batch * count, *masks.shape[2:])
        image = torch.arange(batch, device=masks.device).repeat_interleave(count)
        if noise_std > 0:
            todo, inverse = torch.arange(flat.shape[0], device=masks.device), None
        else:
            todo, inverse = _distinct(flat, image, count)
        scores = torch.empty(todo.numel(), device=self.inputs.device, dtype=torch.float32)
        starts = range(0, todo.numel(), self.batch_size)
        show = (
            self.progress
            if self.progress is not None
            else (len(starts) >= PROGRESS_AFTER and sys.stderr.isatty())
        )
        with torch.inference_mode():
            buffer = torch.empty(
                (min(self.batch_size, todo.numel()), *self.inputs.shape[1:]),
                device=self.inputs.device,
                dtype=self.inputs.dtype,
            )
            for start in tqdm(starts, desc=self.desc, disable=not show, leave=False):
                items = todo[start : start + self.batch_size]
                chunk = resize(flat[items], spatial)
                if noise_std > 0:
                    chunk = chunk + noise_std * _noise(chunk, generator)
                idx = image[items]
                batch_in = buffer[: items.numel()]
                torch.mul(chunk.unsqueeze(1), self.inputs[idx], out=batch_in)
                out = scores_of(self.model(batch_in))
                scores[start : start + items.numel()] = self.score_rows(out, idx).float()
        result = scores if inverse is None else scores[inverse]
        return result.reshape(batch, count)


def _distinct(flat: Tensor, image: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Indices of the first of each group of identical masks of one image, and for every
    mask the position of its group's representative in that list."""
    keep: list[Tensor] = []
    inverse = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    offset = 0
    for b in range(int(image.max()) + 1 if image.numel() else 0):
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


def _noise(chunk: Tensor, generator: torch.Generator | None) -> Tensor:
    # One draw per mask, so the noise a mask gets does not depend on how masks are chunked.
    return torch.stack(
        [
            torch.randn(
                chunk.shape[1:], generator=generator, device=chunk.device, dtype=chunk.dtype
            )
            for _ in range(chunk.shape[0])
        ]
    )
