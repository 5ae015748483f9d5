"""SS-CAM against a one-forward-per-noisy-mask re-implementation of its formula."""

from __future__ import annotations

from collections.abc import Callable

import pytest
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


def _noisy(num_samples: int, std: float, seed: int) -> Callable[[Tensor, list[Tensor]], list]:
    # One generator for the whole batch, drawing an (H, W) noise per mask in the order
    # image, sample, channel: the order the scoring service documents.
    generator = torch.Generator().manual_seed(seed)

    def perturbed(image: Tensor, masks: list[Tensor]) -> list[list[Tensor]]:
        return [
            [(mask + std * torch.randn(mask.shape, generator=generator)) * image for mask in masks]
            for _ in range(num_samples)
        ]

    return perturbed


def test_matches_reference_on_tiny_cnn(tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    cam = camkit.create("sscam", model, "layer4", num_samples=3, std=0.5, seed=7, batch_size=8)
    res = cam(tiny_input, targets=[0, 4])
    weights, acts = reference_score_weights(model, "layer4", tiny_input, [0, 4], _noisy(3, 0.5, 7))
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


def test_matches_reference_on_resnet18(resnet: nn.Module, resnet_input: Tensor) -> None:
    # layer1 at 32 px: 64 channels of 8x8, cheap enough to forward one input at a time.
    cam = camkit.create("ss-cam", resnet, "layer1", num_samples=2, std=2.0, seed=3)
    res = cam(resnet_input)
    weights, acts = reference_score_weights(
        resnet, "layer1", resnet_input, res.targets.tolist(), _noisy(2, 2.0, 3)
    )
    assert_weights_close(res.weights["layer1"], weights)
    assert_maps_close(res.layer_maps["layer1"], reference_maps(weights, acts))


@pytest.mark.parametrize("std", [0.0, 1e-7])
def test_vanishing_noise_is_scorecam(std: float, tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    score = camkit.create("scorecam", model, "layer4")(tiny_input)
    smooth = camkit.create("sscam", model, "layer4", num_samples=3, std=std, seed=0)(tiny_input)
    torch.testing.assert_close(smooth.weights, score.weights, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(smooth.maps, score.maps, rtol=0, atol=1e-5)


def test_same_seed_same_map_other_seed_other_map(tiny_net: nn.Module, tiny_input: Tensor) -> None:
    def run(seed: int | None) -> camkit.CAMResult:
        return camkit.create("sscam", tiny_net, "layer4", num_samples=2, std=1.0, seed=seed)(
            tiny_input
        )

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first.weights["layer4"], again.weights["layer4"])
    assert torch.equal(first.maps, again.maps)
    assert (first.weights["layer4"] - other.weights["layer4"]).abs().max() > 1e-3
    # Without a seed each call draws fresh noise: the weights differ, by however little.
    assert not torch.equal(run(None).weights["layer4"], run(None).weights["layer4"])
