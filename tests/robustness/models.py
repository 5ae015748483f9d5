"""Tiny models of the shapes people explain: classifiers, segmenters, embedders, video nets."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TinyCNN(nn.Module):
    """conv-relu-conv-relu (in place), global average pooling, one linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


class TinySegmenter(nn.Module):
    """A dense classifier returning ``{"out": (B, K, H, W)}``, as torchvision's segmenters do."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, stride=2),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.classifier(self.backbone(x))
        return {"out": F.interpolate(logits, size=x.shape[2:], mode="bilinear")}


class TinyEmbedder(nn.Module):
    """An image encoder returning ``(B, D)`` embeddings (no classes)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1)
        )
        self.project = nn.Linear(6, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.features(x).relu().mean((2, 3)))


class TinyVideoNet(nn.Module):
    """Conv3d layers on ``(B, C, T, H, W)`` clips, global pooling, one linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(4, 5, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(5, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3, 4)))
