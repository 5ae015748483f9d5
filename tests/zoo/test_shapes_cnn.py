"""The shipped ``camkit:shapes-cnn``: accurate on held-out images, and CAM-friendly."""

from __future__ import annotations

import pytest
import torch

import camkit
from camkit import zoo
from camkit.errors import ConfigError
from camkit.metrics import centre_map, pointing_game


@pytest.fixture(scope="module")
def model():
    return zoo.load_model("shapes-cnn")


@pytest.fixture(scope="module")
def held_out():
    # seed 0 is the experiments' default; training used seed 1000
    return zoo.shapes.generate(96, seed=0)


def test_shipped_weights_are_small_and_load_in_eval_mode(model):
    from camkit.zoo.train import WEIGHTS

    assert WEIGHTS.stat().st_size < 1024 * 1024
    assert not model.training


def test_accuracy_on_held_out_images(model, held_out):
    images, labels, _ = held_out
    with torch.inference_mode():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.95


def test_auto_located_layer_is_features(model, held_out):
    extractor = camkit.create("gradcam", model)
    extractor(held_out[0][:2])
    assert extractor.layers == ["features"]


def test_gradcam_points_at_the_shapes_far_more_often_than_the_centre(model, held_out):
    images, _, boxes = held_out
    maps = camkit.create("gradcam", model, "features")(images).maps
    hits = pointing_game(maps, boxes, tolerance=4.29).mean().item()
    centre = pointing_game(centre_map(64, 64).expand(len(boxes), 64, 64), boxes, 4.29)
    # hand check of the baseline: is the centre pixel (32, 32) within 4.29 px of the box?
    x0, y0, x1, y1 = boxes.T.float()
    dx = torch.clamp(torch.maximum(x0 - 32, 32 - (x1 - 1)), min=0)
    dy = torch.clamp(torch.maximum(y0 - 32, 32 - (y1 - 1)), min=0)
    assert torch.equal(centre, (dx**2 + dy**2 <= 4.29**2).float())
    assert hits >= 0.9
    assert hits >= centre.mean().item() + 0.3


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ConfigError, match="shapes-cnn"):
        zoo.load_model("shapes-cn")
