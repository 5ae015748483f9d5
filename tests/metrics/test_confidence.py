"""Average drop and increase in confidence on hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from camkit.metrics import average_drop, confidence_change, increase_in_confidence


def _pixel_sum(x: torch.Tensor) -> torch.Tensor:
    """A "model" whose class-0 score is the sum of the pixels and class-1 score is zero."""
    s = x.sum((1, 2, 3))
    return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_average_drop_and_increase_per_image():
    y = torch.tensor([0.8, 0.5, 0.4])
    o = torch.tensor([0.4, 0.6, 0.4])
    assert average_drop(y, o).tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert increase_in_confidence(y, o).tolist() == [0.0, 1.0, 0.0]


def test_confidence_change_multiplies_the_image_by_its_map():
    image = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])[None]  # Y = 10
    saliency = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])  # O = 1 + 1.5 = 2.5
    drop, increase = confidence_change(
        _pixel_sum, image, saliency, torch.tensor([0]), softmax=False
    )
    assert drop.tolist() == pytest.approx([0.75])
    assert increase.tolist() == [0.0]


def test_confidence_change_with_softmax_compares_probabilities():
    image = torch.full((1, 1, 2, 2), 0.5)  # logits [2, 0] -> p = sigmoid(2)
    saliency = torch.full((1, 2, 2), 0.5)  # logits [1, 0] -> p = sigmoid(1)
    drop, _ = confidence_change(_pixel_sum, image, saliency, torch.tensor([0]))
    p, q = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    assert drop.item() == pytest.approx((p - q) / p)
    # class 1's probability rises when class 0's falls
    _, increase = confidence_change(_pixel_sum, image, saliency, torch.tensor([1]))
    assert increase.tolist() == [1.0]
