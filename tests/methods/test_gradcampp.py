"""Grad-CAM++ against a channel-by-channel re-implementation of its closed form."""

from __future__ import annotations

import pytest
import torch
from reference_impl import (
    Scaled,
    assert_maps_close,
    assert_weights_close,
    reference_gradient_weights,
    reference_maps,
    tiny_cnn,
)
from torch import Tensor, nn

import camkit


def plusplus_weight(activation: Tensor, grad: Tensor) -> Tensor:
    """sum_ij alpha_ij ReLU(g_ij), alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), 0 where 0/0."""
    total = torch.zeros((), dtype=grad.dtype)
    act_sum = activation.sum()
    for g in grad.flatten():
        denom = 2 * g**2 + act_sum * g**3
        alpha = g**2 / denom if denom != 0 else torch.zeros(())
        total = total + alpha * torch.relu(g)
    return total


@pytest.mark.parametrize("targets", [None, [2, 2]])
def test_matches_reference_on_tiny_cnn(tiny_input: Tensor, targets: list[int] | None) -> None:
    model = tiny_cnn(dead=2)
    res = camkit.create("gradcampp", model, "layer4")(tiny_input, targets=targets)
    weights, acts = reference_gradient_weights(
        model, "layer4", tiny_input, res.targets.tolist(), plusplus_weight
    )
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_matches_reference_on_resnet18(resnet: nn.Module, layer: str) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    res = camkit.create("grad-cam++", resnet, layer)(x)
    weights, acts = reference_gradient_weights(
        resnet, layer, x, res.targets.tolist(), plusplus_weight
    )
    assert_weights_close(res.weights[layer], weights)
    assert_maps_close(res.layer_maps[layer], reference_maps(weights, acts))


def test_channels_without_gradient_get_zero_weight(tiny_input: Tensor) -> None:
    # Before layer4's ReLU, dead channels are -1 everywhere, so the ReLU blocks their
    # gradient: g = 0 and alpha is 0/0, which must give 0.
    res = camkit.create("gradcampp", tiny_cnn(dead=3), "layer4.0")(tiny_input)
    weights = res.weights["layer4.0"]
    assert bool(torch.isfinite(weights).all())
    assert bool((weights[:, :3] == 0).all())
    assert bool((weights[:, 3:] != 0).any())


class _Mul(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


@pytest.mark.parametrize("factor", [1e-4, 1e3])
def test_invariant_to_rescaled_activations(tiny_input: Tensor, factor: float) -> None:
    # Scaling layer4 by c and undoing it in the next layer keeps the model's function; the
    # closed form then gives g / c, alpha unchanged and the same map. An additive epsilon in
    # alpha's denominator would not: at c = 1e3 the gradients are around 1e-6.
    model = tiny_cnn()
    rescaled = tiny_cnn()
    rescaled.layer4.append(_Mul(factor))
    rescaled.head.insert(0, _Mul(1 / factor))
    plain = camkit.create("gradcampp", model, "layer4")(tiny_input)
    scaled = camkit.create("gradcampp", rescaled, "layer4")(tiny_input)
    torch.testing.assert_close(scaled.weights["layer4"] * factor, plain.weights["layer4"])
    assert_maps_close(scaled.layer_maps["layer4"], plain.layer_maps["layer4"])
    torch.testing.assert_close(scaled.maps, plain.maps, rtol=0, atol=1e-5)


def test_tiny_scores_follow_the_closed_form(tiny_input: Tensor) -> None:
    # Scores scaled by 1e-3 give gradients around 1e-6: exact zeros are the only guard, so
    # the weights still follow the formula (an epsilon of 1e-6 would dominate g^2 here).
    model = Scaled(tiny_cnn(), 1e-3)
    res = camkit.create("gradcampp", model, "model.layer4")(tiny_input)
    weights, acts = reference_gradient_weights(
        model, "model.layer4", tiny_input, res.targets.tolist(), plusplus_weight
    )
    assert float(weights.abs().max()) < 1e-4
    assert_weights_close(res.weights["model.layer4"], weights)
    assert_maps_close(res.layer_maps["model.layer4"], reference_maps(weights, acts))
