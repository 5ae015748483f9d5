"""Target-class confidence of a model, the quantity faithfulness metrics compare."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from camkit.engine.batching import score_rows

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

    Example:
        >>> target_scores(model, images, torch.tensor([3, 7]))  # softmax probabilities, (2,)
    """

    def score(logits: Tensor, rows: slice) -> Tensor:
        logits = logits.float()
        if softmax:
            logits = logits.softmax(1)
        index = targets[rows].to(logits.device).long()
        return logits.gather(1, index[:, None])[:, 0].cpu()

    return score_rows(model, images, score, batch_size=batch_size)
