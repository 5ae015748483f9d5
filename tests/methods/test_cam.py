"""CAM against a direct computation from the classifier's weights."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import LayerError, LayerNotFoundError, TargetError

ATOL = 1e-5


class TwoHeads(nn.Module):
    """A CAM-shaped model whose last ``nn.Linear`` is not the classifier of ``features``."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.body = tiny
        self.calibrate = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.calibrate(self.body(x))


def test_tiny_model_matches_reference(tiny, x32, ref, informative):
    layer_map, maps = ref.cam(tiny, tiny.features, tiny.fc, x32, [4, 0])
    informative(layer_map)

    res = camkit.create("cam", tiny, "features")(x32, targets=[4, 0])

    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.layer_maps["features"], layer_map, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(res.weights["features"], tiny.fc.weight[[4, 0]].detach())


def test_resnet18_finds_fc_automatically(resnet18, x64, ref, informative):
    layer_map, maps = ref.cam(resnet18, resnet18.layer4, resnet18.fc, x64, [1, 2])
    informative(layer_map)

    res = camkit.create("cam", resnet18, "layer4")(x64, targets=[1, 2])

    assert res.maps.shape == (2, 64, 64)
    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.layer_maps["layer4"], layer_map, atol=ATOL, rtol=ATOL)


def test_fc_layer_given_picks_that_classifier(tiny, x32, ref):
    model = TwoHeads(tiny).eval()
    _, maps = ref.cam(model, tiny.features, tiny.fc, x32, [2, 3])

    res = camkit.create("cam", model, "body.features", fc_layer="body.fc")(x32, targets=[2, 3])

    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)


def test_auto_detected_classifier_that_does_not_match_the_layer(tiny, x32):
    # The model's last nn.Linear maps 5 scores to 5; the layer has 6 channels.
    cam = camkit.create("cam", TwoHeads(tiny).eval(), "body.features")
    with pytest.raises(LayerError) as info:
        cam(x32, targets=[0, 1])
    message = str(info.value)
    assert "takes 5 features" in message
    assert "'body.features' has 6 channels" in message
    assert "fc_layer" in message


def test_layer_with_other_channel_count_than_the_classifier(tiny, x32):
    with pytest.raises(LayerError, match=r"takes 6 features but layer 'features.0' has 4"):
        camkit.create("cam", tiny, "features.0")(x32, targets=[0, 1])


def test_fc_layer_that_is_not_a_classifier(tiny, x32):
    with pytest.raises(
        LayerError, match=r"classifier \(fc_layer 'pool'\) is AdaptiveAvgPool2d, not nn.Linear"
    ):
        camkit.create("cam", tiny, "features", fc_layer="pool")(x32, targets=[0, 1])


def test_fc_layer_that_does_not_exist(tiny, x32):
    with pytest.raises(LayerNotFoundError, match=r"Did you mean 'fc'"):
        camkit.create("cam", tiny, "features", fc_layer="fcc")(x32, targets=[0, 1])


def test_model_without_linear_classifier(x32):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(LayerError, match=r"no nn\.Linear"):
        camkit.create("cam", model, "0")(x32, targets=[0, 1])


def test_callable_target_is_rejected(tiny, x32):
    with pytest.raises(TargetError, match="class-index targets"):
        camkit.create("cam", tiny, "features")(x32, targets=lambda s: s[:, 0])
