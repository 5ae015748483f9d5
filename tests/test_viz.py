"""Overlays: sizes, and pixel values worked out by hand from the colormap and the blend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit.errors import InputError
from camkit.viz import colormap

# Jet is piecewise linear: red = clip(1.5 - |4v - 3|), green = clip(1.5 - |4v - 2|),
# blue = clip(1.5 - |4v - 1|); times 255, rounded.
JET = {0.0: (0, 0, 128), 0.5: (128, 255, 128), 1.0: (128, 0, 0), 0.25: (0, 128, 255)}


def blend(base: float, heat: tuple[int, int, int], alpha: float) -> np.ndarray:
    return np.array([base * (1 - alpha) + h * alpha for h in heat])


@pytest.mark.parametrize("value", sorted(JET))
def test_jet_values(value):
    assert tuple(colormap(np.array([[value]]))[0, 0]) == JET[value]


def test_other_colormaps():
    v = np.array([[0.0, 1.0]])
    assert colormap(v, "viridis").tolist() == [[[0x44, 0x01, 0x54], [0xFD, 0xE7, 0x25]]]
    assert colormap(np.array([[0.2]]), "gray").tolist() == [[[51, 51, 51]]]
    with pytest.raises(InputError, match="unknown colormap 'hot'"):
        colormap(v, "hot")


def test_overlay_pixels_at_hot_and_cold_spots():
    image = np.full((20, 30, 3), 100, dtype=np.uint8)
    cam = np.zeros((20, 30), dtype=np.float32)
    cam[5, 7] = 1.0
    cam[10, 20] = 0.5

    out = camkit.overlay(image, cam, alpha=0.4)

    assert isinstance(out, Image.Image) and out.size == (30, 20) and out.mode == "RGB"
    pixels = np.asarray(out).astype(float)
    np.testing.assert_allclose(pixels[5, 7], blend(100, JET[1.0], 0.4), atol=1)
    np.testing.assert_allclose(pixels[10, 20], blend(100, JET[0.5], 0.4), atol=1)
    np.testing.assert_allclose(pixels[0, 0], blend(100, JET[0.0], 0.4), atol=1)


def test_overlay_resizes_the_map_to_the_image():
    image = torch.full((3, 24, 40), 0.5)  # (C, H, W) floats: 0.5 is 128
    cam = torch.ones(3, 5)
    cam[0, 0] = 0.0  # the top-left corner of the upsampled map stays exactly 0

    out = camkit.overlay(image, cam, alpha=0.5)

    assert out.size == (40, 24)
    pixels = np.asarray(out).astype(float)
    np.testing.assert_allclose(pixels[23, 39], blend(128, JET[1.0], 0.5), atol=1)
    np.testing.assert_allclose(pixels[0, 0], blend(128, JET[0.0], 0.5), atol=1)


def test_overlay_of_an_extractor_result(tiny, x32):
    res = camkit.create("gradcam", tiny, "features")(x32, targets=[0, 1])
    image = Image.new("RGB", (32, 32), (10, 20, 30))
    out = camkit.overlay(image, res.maps[0], alpha=1.0)
    # With alpha 1 the overlay is the colormap of the map itself.
    np.testing.assert_array_equal(np.asarray(out), colormap(res.maps[0].numpy()))


def test_overlay_rejects_a_batch_of_maps():
    with pytest.raises(InputError, match=r"one \(h, w\) map, got shape \(2, 4, 4\)"):
        camkit.overlay(np.zeros((4, 4, 3), dtype=np.uint8), torch.zeros(2, 4, 4))


def test_cividis_interpolates_its_anchor_colours():
    # anchors at 0, 0.1, ..., 1; 0.05 is halfway between #00224e and #083370
    got = colormap(np.array([[0.0, 0.05, 0.5, 1.0]]), "cividis")[0].tolist()
    halfway = [round((a + b) / 2 + 1e-9) for a, b in zip((0x00, 0x22, 0x4E), (0x08, 0x33, 0x70))]
    assert got == [[0x00, 0x22, 0x4E], halfway, [0x7D, 0x7C, 0x78], [0xFE, 0xE8, 0x38]]
