"""IS-CAM against a one-forward-per-input re-implementation of the reference accumulation."""

from __future__ import annotations

from collections.abc import Callable

import torch
from reference_impl import (
    assert_maps_close,
    assert_weights_close,
    reference_maps,
    reference_score_weights,
    tiny_cnn,
)
from torch import Tensor, nn

import camkit


def _accumulated(num_samples: int) -> Callable[[Tensor, list[Tensor]], list[list[Tensor]]]:
    # M_i = sum_{j=0}^{i-1} (j / N) * mask * X for i = 1..N, summed term by term.
    def perturbed(image: Tensor, masks: list[Tensor]) -> list[list[Tensor]]:
        samples = []
        for i in range(1, num_samples + 1):
            row = []
            for mask in masks:
                total = torch.zeros_like(image)
                for j in range(i):
                    total = total + (j / num_samples) * (mask * image)
                row.append(total)
            samples.append(row)
        return samples

    return perturbed


def test_matches_reference_on_tiny_cnn(tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    res = camkit.create("iscam", model, "layer4", num_samples=4, batch_size=9)(tiny_input)
    targets = res.targets.tolist()
    weights, acts = reference_score_weights(model, "layer4", tiny_input, targets, _accumulated(4))
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


def test_matches_reference_on_resnet18(resnet: nn.Module, resnet_input: Tensor) -> None:
    # layer1 at 32 px: 64 channels of 8x8, cheap enough to forward one input at a time.
    res = camkit.create("is-cam", resnet, "layer1", num_samples=3)(resnet_input)
    weights, acts = reference_score_weights(
        resnet, "layer1", resnet_input, res.targets.tolist(), _accumulated(3)
    )
    assert_weights_close(res.weights["layer1"], weights)
    assert_maps_close(res.layer_maps["layer1"], reference_maps(weights, acts))


def test_one_step_scores_only_the_zero_image(tiny_net: nn.Module, tiny_input: Tensor) -> None:
    # With N = 1 the only input is M_1 = 0 for every channel: equal gains, uniform weights.
    res = camkit.create("iscam", tiny_net, "layer4", num_samples=1)(tiny_input)
    channels = res.weights["layer4"].shape[1]
    torch.testing.assert_close(
        res.weights["layer4"], torch.full((2, channels), 1 / channels), rtol=0, atol=1e-7
    )
