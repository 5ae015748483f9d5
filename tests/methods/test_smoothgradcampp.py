"""Smooth Grad-CAM++ against a sample-by-sample, channel-by-channel re-implementation."""

from __future__ import annotations

import pytest
import torch
from reference_impl import (
    activation_and_gradient,
    assert_maps_close,
    assert_weights_close,
    reference_maps,
    tiny_cnn,
)
from torch import Tensor, nn

import camkit


def reference_weights(
    model: nn.Module,
    layer: str,
    images: Tensor,
    targets: list[int],
    num_samples: int,
    std: float,
    seed: int,
) -> tuple[Tensor, Tensor]:
    # The noise of the whole batch comes from one draw of shape (n, B, C_in, H, W).
    noise = torch.randn((num_samples, *images.shape), generator=torch.Generator().manual_seed(seed))
    weights, acts = [], []
    for b, (image, target) in enumerate(zip(images, targets)):
        clean = activation_and_gradient(model, layer, image, target)[0]
        grads = [
            activation_and_gradient(model, layer, image + std * noise[m, b], target)[1]
            for m in range(num_samples)
        ]
        row = []
        for k in range(clean.shape[0]):
            d1 = sum(g[k] for g in grads) / num_samples
            d2 = sum(g[k] ** 2 for g in grads) / num_samples
            d3 = sum(g[k] ** 3 for g in grads) / num_samples
            denom = 2 * d2 + clean[k].sum() * d3
            alpha = torch.where(denom != 0, d2 / denom, torch.zeros(()))
            row.append((alpha * torch.relu(d1)).sum())
        weights.append(torch.stack(row))
        acts.append(clean)
    return torch.stack(weights), torch.stack(acts)


def test_matches_reference_on_tiny_cnn(tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    cam = camkit.create("smoothgradcampp", model, "layer4", num_samples=3, std=0.3, seed=9)
    res = cam(tiny_input, targets=[1, 0])
    weights, acts = reference_weights(model, "layer4", tiny_input, [1, 0], 3, 0.3, 9)
    assert_weights_close(res.weights["layer4"], weights)
    assert_maps_close(res.layer_maps["layer4"], reference_maps(weights, acts))


def test_matches_reference_on_resnet18(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    cam = camkit.create("smooth-grad-cam++", resnet, "layer3", num_samples=2, std=0.5, seed=1)
    res = cam(x)
    weights, acts = reference_weights(resnet, "layer3", x, res.targets.tolist(), 2, 0.5, 1)
    assert_weights_close(res.weights["layer3"], weights)
    assert_maps_close(res.layer_maps["layer3"], reference_maps(weights, acts))


def test_without_noise_is_gradcampp(tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    plain = camkit.create("gradcampp", model, "layer4")(tiny_input)
    smooth = camkit.create("smoothgradcampp", model, "layer4", std=0.0, num_samples=3)(tiny_input)
    torch.testing.assert_close(smooth.weights, plain.weights, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(smooth.maps, plain.maps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_seeded_runs_repeat_and_do_not_depend_on_batch_size(
    tiny_net: nn.Module, tiny_input: Tensor, batch_size: int
) -> None:
    def run(seed: int | None, batch_size: int = 32) -> camkit.CAMResult:
        cam = camkit.create(
            "smoothgradcampp",
            tiny_net,
            "layer4",
            num_samples=3,
            std=1.0,
            seed=seed,
            batch_size=batch_size,
        )
        return cam(tiny_input)

    first = run(3)
    chunked = run(3, batch_size)
    torch.testing.assert_close(chunked.weights, first.weights, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(chunked.maps, first.maps, rtol=0, atol=1e-5)
    assert torch.equal(run(3).maps, first.maps)
    # Far above float noise (~1e-7 relative): other noise, other weights.
    scale = float(first.weights["layer4"].abs().max())
    assert float((run(4).weights["layer4"] - first.weights["layer4"]).abs().max()) > 1e-4 * scale
    # Without a seed each call draws fresh noise: the weights differ, by however little
    # (the same input gives bit-identical weights, as the seeded repeat above shows).
    assert not torch.equal(run(None).weights["layer4"], run(None).weights["layer4"])
