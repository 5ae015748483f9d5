"""Tiny models of each task for the ``[task]`` tests, also loaded as ``python:`` model sources.

Their outputs depend on the input smoothly and fast, so that deletion and insertion curves
change step by step and the tests can re-compute them by hand.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TinyDetector(nn.Module):
    """A torchvision-style detector: one dict of ``boxes``, ``scores``, ``labels`` per image.

    Four fixed boxes (the image's quadrants), each reported once per class ``1..classes``,
    scored ``sigmoid(mean of the class's logit map over the quadrant)``.
    """

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, classes, 1)
        self.classes = classes

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        logits = self.head(self.features(x))
        h, w = x.shape[-2:]
        quadrants = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h),
                     (w // 2, h // 2, w, h)]  # fmt: skip
        out = []
        for image in logits:
            boxes, scores, labels = [], [], []
            for x0, y0, x1, y1 in quadrants:
                mean = image[:, y0:y1, x0:x1].mean((1, 2))
                for c in range(self.classes):
                    boxes.append(torch.tensor([x0, y0, x1, y1], dtype=x.dtype))
                    scores.append(mean[c].sigmoid())
                    labels.append(c + 1)
            out.append({
                "boxes": torch.stack(boxes), "scores": torch.stack(scores),
                "labels": torch.tensor(labels),
            })  # fmt: skip
        return out


class TinySegmenter(nn.Module):
    """``{"out": (B, classes, H, W)}`` logits, like torchvision's segmenters."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(6, classes, 3, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"out": self.head(self.features(x))}


class TinyEmbedder(nn.Module):
    """``(B, 8)`` embeddings."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.project = nn.Linear(6, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x).mean((2, 3)))


def detector() -> nn.Module:
    return TinyDetector().eval()


def segmenter() -> nn.Module:
    return TinySegmenter().eval()


def embedder() -> nn.Module:
    return TinyEmbedder().eval()
