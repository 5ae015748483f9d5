"""Target-class confidence of a model, the quantity faithfulness metrics compare."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from camkit.engine.batching import score_rows
from camkit.metrics.checks import (
    check_classes,
    check_images,
    check_positive_int,
    check_targets,
)

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
        ``(N,)`` float32 scores, computed under ``torch.inference_mode()`` through the engine's
        chunked scoring.

    Raises:
        InputError, TargetError, ModelOutputError: see :mod:`camkit.metrics.checks`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> target_scores(model, torch.rand(2, 3, 2, 2), torch.tensor([0, 2])).shape
        torch.Size([2])
    """
    check_images(images)
    check_targets(targets, images.shape[0])
    check_positive_int(batch_size, "batch_size")

    def score(logits: Tensor, rows: slice) -> Tensor:
        logits = logits.float()
        index = targets[rows].to(logits.device).long()
        check_classes(index, logits, index.shape[0])
        if softmax:
            logits = logits.softmax(1)
        return logits.gather(1, index[:, None])[:, 0].cpu()

    return score_rows(model, images, score, batch_size=batch_size)
