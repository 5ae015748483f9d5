"""Layer-CAM against a pixel-by-pixel re-implementation, single- and multi-layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from reference_impl import (
    assert_maps_close,
    assert_weights_close,
    reference_gradient_weights,
    reference_maps,
    tiny_cnn,
)
from torch import Tensor, nn

import camkit


def positive_gradient(_activation: Tensor, grad: Tensor) -> Tensor:
    """Pixel weights ReLU(g), one position at a time."""
    return torch.tensor([max(float(g), 0.0) for g in grad.flatten()]).reshape(grad.shape)


def test_matches_reference_on_tiny_cnn(tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    res = camkit.create("layercam", model, "layer4")(tiny_input, targets=[4, 2])
    weights, acts = reference_gradient_weights(
        model, "layer4", tiny_input, [4, 2], positive_gradient
    )
    assert res.weights["layer4"].shape == acts.shape
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_matches_reference_on_resnet18(resnet: nn.Module, layer: str) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    res = camkit.create("layer-cam", resnet, layer)(x)
    weights, acts = reference_gradient_weights(
        resnet, layer, x, res.targets.tolist(), positive_gradient
    )
    assert_weights_close(res.weights[layer], weights)
    assert_maps_close(res.layer_maps[layer], reference_maps(weights, acts))


def test_multi_layer_maps_are_fused(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    layers = ["layer2", "layer3", "layer4"]
    res = camkit.create("layercam", resnet, layers)(x)
    targets = res.targets.tolist()
    fused = []
    for layer in layers:
        weights, acts = reference_gradient_weights(resnet, layer, x, targets, positive_gradient)
        layer_map = reference_maps(weights, acts)
        assert_maps_close(res.layer_maps[layer], layer_map)
        # Each layer's map min-max normalized per image, upsampled to the input, then the max.
        lo = layer_map.flatten(1).amin(1)[:, None, None]
        hi = layer_map.flatten(1).amax(1)[:, None, None]
        normalized = (layer_map - lo) / (hi - lo)
        fused.append(
            F.interpolate(normalized[:, None], size=(64, 64), mode="bilinear", align_corners=False)[
                :, 0
            ]
        )
    torch.testing.assert_close(res.maps, torch.stack(fused).amax(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(res.maps, camkit.fuse(list(res.layer_maps.values()), size=(64, 64)))
