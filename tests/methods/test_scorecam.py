"""Score-CAM against a one-forward-per-mask re-implementation of its formula."""

from __future__ import annotations

import pytest
import torch
from reference_impl import (
    assert_maps_close,
    assert_weights_close,
    reference_maps,
    reference_score_weights,
    tiny_cnn,
)
from torch import Tensor

import camkit


def _masked(image: Tensor, masks: list[Tensor]) -> list[list[Tensor]]:
    return [[mask * image for mask in masks]]


@pytest.mark.parametrize("targets", [None, [1, 3]])
def test_matches_reference_on_tiny_cnn(tiny_input: Tensor, targets: list[int] | None) -> None:
    # Two dead channels: their masks are all zeros, scored once but weighted like any other.
    model = tiny_cnn(dead=2)
    res = camkit.create("scorecam", model, "layer4", batch_size=5)(tiny_input, targets=targets)
    want_targets = targets or model(tiny_input).argmax(1).tolist()
    assert res.targets.tolist() == want_targets
    weights, acts = reference_score_weights(model, "layer4", tiny_input, want_targets, _masked)
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


def test_matches_reference_on_resnet18(resnet: torch.nn.Module, resnet_input: Tensor) -> None:
    # layer2 at 32 px: 128 channels of 4x4, cheap enough to forward one mask at a time.
    res = camkit.create("score-cam", resnet, "layer2")(resnet_input)
    weights, acts = reference_score_weights(
        resnet, "layer2", resnet_input, res.targets.tolist(), _masked
    )
    assert_weights_close(res.weights["layer2"], weights)
    assert_maps_close(res.layer_maps["layer2"], reference_maps(weights, acts))
