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


MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _photo() -> torch.Tensor:
    """(3, 6, 8) values in [0, 1] on the uint8 grid, so every reading is exact."""
    return torch.arange(3 * 6 * 8).reshape(3, 6, 8).float() * 1.5 % 256 / 255


def test_normalized_tensor_is_unnormalized_with_mean_and_std():
    image = _photo()
    normalized = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    cam = torch.rand(3, 4)
    expected = camkit.overlay(image, cam, alpha=0.3)

    out = camkit.overlay(normalized, cam, alpha=0.3, mean=MEAN, std=STD)
    np.testing.assert_allclose(np.asarray(out, float), np.asarray(expected, float), atol=1)

    class Prep:
        mean, std = MEAN, STD

    via_prep = camkit.overlay(normalized[None], cam, alpha=0.3, preprocessing=Prep())
    np.testing.assert_array_equal(np.asarray(via_prep), np.asarray(out))


def test_normalized_tensor_without_mean_and_std_is_refused():
    image = _photo()
    normalized = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with pytest.raises(InputError, match=r"looks normalized: pass mean=\.\.\. and std=\.\.\."):
        camkit.overlay(normalized, torch.rand(3, 4))


@pytest.mark.parametrize(
    ("image", "pixels"),
    [
        (Image.new("RGB", (8, 6), (10, 200, 30)), (10, 200, 30)),
        (np.full((6, 8, 3), 77, np.uint8), (77, 77, 77)),
        (np.full((6, 8), 1000, np.uint16), (4, 4, 4)),  # 1000 / 65535 of white, not clipped
        (torch.full((1, 6, 8), 0.2), (51, 51, 51)),
    ],
)
def test_image_kinds(image, pixels):
    # alpha 0 shows the image alone
    out = camkit.overlay(image, torch.zeros(6, 8), alpha=0.0)
    assert out.size == (8, 6)
    assert tuple(np.asarray(out)[3, 4]) == pixels


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
        ({"alpha": "0.5"}, "alpha must be a number in .* not str"),
        ({"alpha": True}, "not bool"),
        ({"cmap": 3}, "a colormap is named by a string, not int"),
        ({"cmap": "rainbow"}, "unknown colormap 'rainbow'"),
        ({"mean": MEAN}, "give both mean and std"),
        ({"mean": (0, 0), "std": STD}, "mean must be three finite numbers"),
        ({"mean": MEAN, "std": (1, 0, 1)}, r"std must be three finite numbers \(std > 0\)"),
    ],
)
def test_overlay_arguments_are_validated(kwargs, match):
    with pytest.raises(InputError, match=match):
        camkit.overlay(torch.rand(3, 6, 8), torch.rand(6, 8), **kwargs)


@pytest.mark.parametrize(
    ("image", "cam", "match"),
    [
        ("cat.png", torch.rand(2, 2), "not str"),
        (np.zeros((6, 8, 3), np.int64), torch.rand(2, 2), "must be uint8"),
        (torch.rand(5, 6, 8), torch.rand(2, 2), r"1, 3 or 4 channels"),
        (torch.full((3, 2, 2), float("nan")), torch.rand(2, 2), "NaN or Inf"),
        (torch.rand(3, 6, 8), [[0.1, 0.2]], "cam must be a tensor or an array, not list"),
    ],
)
def test_overlay_inputs_are_validated(image, cam, match):
    with pytest.raises(InputError, match=match):
        camkit.overlay(image, cam)
