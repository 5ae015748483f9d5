"""3-D inputs: (B, C, T, H, W) clips through Conv3d models, maps upsampled trilinearly."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import camkit
from camkit.errors import LayerError
from camkit.targets import ClassTarget

from .models import TinyVideoNet
from .reference import (
    MaskedScores,
    hooks_on,
    masked_scores_reference,
    normalized_upsampled,
    reference_capture,
)


def _clip() -> tuple[TinyVideoNet, Tensor]:
    torch.manual_seed(0)
    return TinyVideoNet().eval(), torch.randn(2, 3, 4, 8, 10)


def test_gradcam_on_video_matches_reference() -> None:
    model, x = _clip()
    index = torch.tensor([[1], [3]])
    acts, grads, _ = reference_capture(
        model, model.features, x, lambda s: s.gather(1, index).squeeze(1), lambda t: t
    )
    layer_map = torch.relu(torch.einsum("bc,bcthw->bthw", grads.mean((2, 3, 4)), acts))
    assert acts.shape[2:] == (2, 4, 5)

    res = camkit.create("gradcam", model)(x, targets=[1, 3])
    assert res.layers == ["features"]
    torch.testing.assert_close(res.layer_maps["features"], layer_map, rtol=1e-4, atol=1e-7)
    assert res.maps.shape == (2, 4, 8, 10)
    torch.testing.assert_close(res.maps, normalized_upsampled(layer_map, (4, 8, 10)))
    assert float(layer_map.amax()) > 0
    assert hooks_on(model) == []


def test_scoring_service_on_video_masks_trilinearly() -> None:
    model, x = _clip()
    acts, _, _ = reference_capture(model, model.features, x, lambda s: s[:, 0], lambda t: t)
    target = ClassTarget([2, 0])
    expected = masked_scores_reference(model, x, acts, target)
    res = camkit.Extractor(MaskedScores(MaskedScores.Config(batch_size=3)), model, "features")(
        x, targets=target
    )
    torch.testing.assert_close(res.layer_maps["features"], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", camkit.list_methods())
def test_every_method_on_video(method: str) -> None:
    model, x = _clip()
    fields = camkit.method_info(method).config.model_fields
    config = {k: v for k, v in {"num_samples": 2, "seed": 0}.items() if k in fields}
    if camkit.method_info(method).cls.needs_attention:  # a ViT-only method refuses a 3-D CNN
        with pytest.raises(LayerError, match="attention"):
            camkit.create(method, model, "features", **config)(x)
        return
    res = camkit.create(method, model, "features", **config)(x)
    # Methods built on input gradients map at the clip's resolution.
    grid = (4, 8, 10) if method in ("fullgrad", "guidedbackprop", "guidedgradcam") else (2, 4, 5)
    assert res.layer_maps["features"].shape == (2, *grid)
    assert res.maps.shape == (2, 4, 8, 10) and res.maps.dtype == torch.float32
    assert bool(torch.isfinite(res.maps).all()) and res.maps.min() >= 0 and res.maps.max() <= 1
    torch.testing.assert_close(
        res.maps, normalized_upsampled(res.layer_maps["features"], (4, 8, 10))
    )
