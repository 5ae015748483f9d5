"""Target-class confidence of a model, the quantity faithfulness metrics compare."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from camkit.engine.outputs import scores_of

#: Anything that maps ``(N, C, H, W)`` images to scores (a model, or a model behind a
#: normalization step).
ModelFn = Callable[[Tensor], object]


def target_scores(
    model: ModelFn, images: Tensor, targets: Tensor, *, softmax: bool = True, batch_size: int = 64
) -> Tensor:
    """Score of each image's target class.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        images: ``(N, C, H, W)``.
        targets: ``(N,)`` class indices.
        softmax: report the softmax probability of the class instead of its raw score.
        batch_size: images per forward pass.

    Returns:
        ``(N,)`` float32 scores, computed under ``torch.inference_mode()``.
    """
    out = []
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            logits = scores_of(model(images[start : start + batch_size])).float()
            if softmax:
                logits = logits.softmax(1)
            index = targets[start : start + batch_size].to(logits.device).long()
            out.append(logits.gather(1, index[:, None])[:, 0].cpu())
    return torch.cat(out) if out else torch.zeros(0)
