"""The one chunk loop: work of many rows cut into chunks of the run option ``batch_size``,
with a progress bar for long work; and the scoring entry for work outside an extractor's call
(the metrics)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from camkit.engine.outputs import scores_of

#: Chunks of work after which a progress bar is worth showing (when ``progress=None``).
PROGRESS_AFTER = 8


def chunks(
    total: int, size: int, progress: bool | None = None, desc: str = ""
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``size`` rows out of ``total``, with a progress bar
    (``progress=None``: when the work is long and stderr is a terminal).

    Example:
        >>> list(chunks(5, 2))
        [(0, 2), (2, 4), (4, 5)]
    """
    starts = range(0, total, size)
    long = len(starts) >= PROGRESS_AFTER and sys.stderr.isatty()
    show = progress if progress is not None else long
    for start in tqdm(starts, desc=desc, disable=not show, leave=False):
        yield start, min(start + size, total)


def score_rows(
    model: Callable[[Tensor], object],
    rows: Tensor,
    score: Callable[[Tensor, slice], Tensor],
    *,
    batch_size: int,
) -> Tensor:
    """``score(scores, rows)`` of ``model`` on ``rows``, chunk by chunk under inference mode,
    concatenated (``torch.zeros(0)`` for no rows).

    Example:
        >>> score_rows(model, images, lambda s, rows: s[:, 3], batch_size=64).shape  # (N,)
        torch.Size([2])
    """
    with torch.inference_mode():
        parts = [
            score(scores_of(model(rows[start:stop])), slice(start, stop))
            for start, stop in chunks(rows.shape[0], batch_size, progress=False)
        ]
    return torch.cat(parts) if parts else torch.zeros(0)
