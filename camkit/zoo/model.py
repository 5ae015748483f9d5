"""``camkit:shapes-cnn``: a small CNN for :mod:`camkit.zoo.shapes`, built for CAM methods.

Three convolution stages reduce 64 x 64 inputs to a 16 x 16 grid; ``features`` is the last
stage, followed by global average pooling and one linear classifier, the architecture CAM
needs. Layer auto-location finds ``features``.
"""

from __future__ import annotations

from torch import Tensor, nn

from camkit.zoo.shapes import CLASSES


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class ShapesCNN(nn.Module):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> ``(B, num_classes)`` logits."""

    def __init__(
        self, num_classes: int = len(CLASSES), channels: tuple[int, int, int] = (16, 32, 48)
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Sequential(*_conv(3, c1), nn.MaxPool2d(2))
        self.block = nn.Sequential(*_conv(c1, c2), nn.MaxPool2d(2))
        self.features = nn.Sequential(*_conv(c2, c3), *_conv(c3, c3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(self.block(self.stem(x)))).flatten(1))
