"""XGrad-CAM against a channel-by-channel re-implementation of its formula."""

from __future__ import annotations

import pytest
import torch
from reference_impl import (
    assert_maps_close,
    assert_weights_close,
    reference_gradient_weights,
    reference_maps,
    tiny_cnn,
)
from torch import Tensor, nn

import camkit


def xgrad_weight(activation: Tensor, grad: Tensor) -> Tensor:
    """sum_ij g_ij A_ij / sum_mn A_mn, 0 for a channel summing to exactly 0."""
    total = activation.sum()
    if total == 0:
        return torch.zeros(())
    return sum(g * a / total for g, a in zip(grad.flatten(), activation.flatten()))


@pytest.mark.parametrize("targets", [None, [3, 1]])
def test_matches_reference_on_tiny_cnn(tiny_input: Tensor, targets: list[int] | None) -> None:
    model = tiny_cnn(dead=2)
    res = camkit.create("xgradcam", model, "layer4")(tiny_input, targets=targets)
    weights, acts = reference_gradient_weights(
        model, "layer4", tiny_input, res.targets.tolist(), xgrad_weight
    )
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_matches_reference_on_resnet18(resnet: nn.Module, layer: str) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    res = camkit.create("xgrad-cam", resnet, layer)(x)
    weights, acts = reference_gradient_weights(resnet, layer, x, res.targets.tolist(), xgrad_weight)
    assert_weights_close(res.weights[layer], weights)
    assert_maps_close(res.layer_maps[layer], reference_maps(weights, acts))


def test_all_zero_channels_get_zero_weight(tiny_input: Tensor) -> None:
    res = camkit.create("xgradcam", tiny_cnn(dead=3), "layer4")(tiny_input)
    weights = res.weights["layer4"]
    assert bool(torch.isfinite(weights).all())
    assert bool((weights[:, :3] == 0).all())
    assert bool((weights[:, 3:] != 0).all())
