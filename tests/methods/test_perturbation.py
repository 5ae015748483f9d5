"""Properties every Score-family method shares: chunking, bounded memory, deduplication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from reference_impl import tiny_cnn
from torch import Tensor, nn

import camkit

# Small configs keep the tests fast; SS-CAM is seeded so that runs are comparable.
FAMILY: dict[str, dict[str, Any]] = {
    "scorecam": {},
    "sscam": {"num_samples": 3, "std": 0.4, "seed": 11},
    "iscam": {"num_samples": 3},
}


@pytest.mark.parametrize("name", FAMILY)
def test_chunked_equals_unchunked(name: str, tiny_input: Tensor) -> None:
    model = tiny_cnn(dead=2)
    whole = camkit.create(name, model, "layer4", batch_size=1000, **FAMILY[name])(tiny_input)
    for batch_size in (1, 3, 7, 32):
        chunked = camkit.create(name, model, "layer4", batch_size=batch_size, **FAMILY[name])
        res = chunked(tiny_input)
        torch.testing.assert_close(res.weights, whole.weights, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(res.maps, whole.maps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY)
def test_forwards_never_exceed_batch_size_whatever_the_channel_count(
    name: str, count_rows: Callable[[nn.Module], list[int]]
) -> None:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    for channels in (8, 64):
        model = tiny_cnn(channels)
        rows = count_rows(model)
        camkit.create(name, model, "layer4", batch_size=6, **FAMILY[name])(x)
        assert rows[0] == 2, "the clean forward"
        # Memory is bounded by batch_size inputs: no forward, hence no masked batch, is larger.
        assert max(rows[1:]) == 6
        assert sum(rows[1:]) > 6 * 2, "the scoring was chunked"


def test_constant_channels_are_forwarded_once_per_image(
    tiny_input: Tensor, count_rows: Callable[[nn.Module], list[int]]
) -> None:
    channels, dead = 12, 4
    model = tiny_cnn(channels, dead=dead)
    rows = count_rows(model)
    res = camkit.create("scorecam", model, "layer4", batch_size=4)(tiny_input)
    # Per image: the clean forward, one per live channel, and one for all dead channels.
    assert sum(rows) == 2 * (1 + (channels - dead) + 1)
    dead_weights = res.weights["layer4"][:, :dead]
    assert bool((dead_weights == dead_weights[:, :1]).all()), "dead channels share one score"


def test_iscam_forwards_the_zero_step_once(
    tiny_input: Tensor, count_rows: Callable[[nn.Module], list[int]]
) -> None:
    channels, dead, steps = 12, 4, 3
    model = tiny_cnn(channels, dead=dead)
    rows = count_rows(model)
    camkit.create("iscam", model, "layer4", num_samples=steps)(tiny_input)
    # Step 1 scales every mask by 0, and dead channels are zero at every step: all those
    # inputs are the zero image, forwarded once per image.
    assert sum(rows) == 2 * (1 + 1 + (steps - 1) * (channels - dead))


def test_noisy_masks_are_all_forwarded(
    tiny_input: Tensor, count_rows: Callable[[nn.Module], list[int]]
) -> None:
    model = tiny_cnn(12, dead=4)
    rows = count_rows(model)
    camkit.create("sscam", model, "layer4", num_samples=2, std=0.1, seed=0)(tiny_input)
    assert sum(rows) == 2 * (1 + 2 * 12)


@pytest.mark.parametrize("name", FAMILY)
def test_options_are_validated(name: str, tiny_net: nn.Module) -> None:
    with pytest.raises(camkit.errors.ConfigError, match="precision"):
        camkit.create(name, tiny_net, "layer4", precision="fp16")
    with pytest.raises(camkit.errors.ConfigError, match="batch_size"):
        camkit.create(name, tiny_net, "layer4", batch_size=0)


def test_noiseless_sscam_forwards_each_channel_once(
    tiny_input: Tensor, count_rows: Callable[[nn.Module], list[int]]
) -> None:
    model = tiny_cnn(12, dead=4)
    rows = count_rows(model)
    camkit.create("sscam", model, "layer4", num_samples=5, std=0.0)(tiny_input)
    assert sum(rows) == 2 * (1 + (12 - 4) + 1)
