"""Layer resolution: names, indices, modules, lists, auto-location, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.layers import locate, resolve, resolve_all
from camkit.errors import LayerError, LayerNotFoundError


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("layer4", "layer4"),
        ("layer4.1.conv2", "layer4.1.conv2"),
        ("layer4[-1]", "layer4.1"),
        ("layer4[0].conv1", "layer4.0.conv1"),
        ("layer4[-1].bn2", "layer4.1.bn2"),
        ("layer3[1][0]", "layer3.1.conv1"),
    ],
)
def test_names_and_indices(resnet18, spec, name):
    assert resolve(resnet18, spec) == (name, resnet18.get_submodule(name))


def test_negative_index_into_sequential(vgg11):
    assert resolve(vgg11, "features[-1]") == ("features.20", vgg11.features[20])
    assert resolve(vgg11, "features[-3]") == ("features.18", vgg11.features[18])


def test_module_object(resnet18):
    assert resolve(resnet18, resnet18.layer3[1].conv2) == (
        "layer3.1.conv2",
        resnet18.layer3[1].conv2,
    )


def test_list_keeps_order_and_drops_duplicates(resnet18):
    layers = resolve_all(resnet18, ["layer4", resnet18.layer3, "layer4[-1]", "layer4"])
    assert [name for name, _ in layers] == ["layer4", "layer3", "layer4.1"]


def test_unknown_name_suggests_close_matches(resnet18):
    with pytest.raises(LayerNotFoundError) as info:
        resolve(resnet18, "layer5")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "no layer 'layer5' in ResNet" in message
    assert "Did you mean" in message and "'layer4'" in message


def test_unknown_nested_name_names_the_failing_step(resnet18):
    with pytest.raises(KeyError, match=r"no layer 'layer4.1.conv3'.*Did you mean 'layer4.1.conv"):
        resolve(resnet18, "layer4.1.conv3")


def test_index_out_of_range(resnet18):
    with pytest.raises(LayerNotFoundError, match=r"layer4 has 2 children, so index 2 is out"):
        resolve(resnet18, "layer4[2]")


def test_unparsable_name(resnet18):
    with pytest.raises(LayerNotFoundError, match="cannot parse"):
        resolve(resnet18, "layer4[x]")


def test_module_not_in_model(resnet18):
    with pytest.raises(LayerNotFoundError, match="Conv2d passed as layer is not a submodule"):
        resolve(resnet18, nn.Conv2d(3, 3, 1))


def test_wrong_kind_and_empty_list(resnet18):
    with pytest.raises(LayerNotFoundError, match="not int"):
        resolve(resnet18, 4)  # type: ignore[arg-type]
    with pytest.raises(LayerNotFoundError, match="empty list"):
        resolve_all(resnet18, [])


def test_create_reports_a_missing_layer_immediately(tiny):
    with pytest.raises(LayerNotFoundError, match="Did you mean 'features'"):
        camkit.create("gradcam", tiny, "feature")


def test_locate_finds_the_last_spatial_output(resnet18, tiny):
    assert locate(resnet18, torch.zeros(1, 3, 64, 64))[0] == "layer4"
    # The pooled (B, C, 1, 1) output has no spatial extent; the Sequential finishes last.
    assert locate(tiny, torch.zeros(1, 3, 32, 32))[0] == "features"


def test_locate_without_spatial_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(LayerError, match="pass layer="):
        locate(model, torch.zeros(1, 3, 2, 2))


class CountingNet(nn.Module):
    """Wraps a model and counts its forward passes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


def test_auto_locate_on_first_input(tiny, x32, no_hooks):
    model = CountingNet(tiny)
    cam = camkit.create("gradcam", model)
    assert cam.layers is None and model.calls == 0  # no dummy forward without input_shape

    res = cam(x32, targets=[0, 1])

    assert cam.layers == ["inner.features"]
    explicit = camkit.create("gradcam", model, "inner.features")(x32, targets=[0, 1])
    torch.testing.assert_close(res.maps, explicit.maps, atol=0, rtol=0)
    no_hooks(model)


def test_auto_locate_with_input_shape(tiny, x32):
    model = CountingNet(tiny)
    cam = camkit.create("gradcam", model, input_shape=(3, 32, 32))
    assert cam.layers == ["inner.features"] and model.calls == 1

    cam(x32, targets=[0, 1])
    assert model.calls == 2  # located once, at creation


def test_multi_layer_maps_are_the_fusion_of_layer_maps(tiny, x32, ref):
    layers = ["features.0", "features.3"]
    res = camkit.create("gradcam", tiny, layers)(x32, targets=[1, 2])

    assert list(res.layer_maps) == layers
    assert res.layer_maps["features.0"].shape == (2, 32, 32)
    assert res.layer_maps["features.3"].shape == (2, 16, 16)
    for name in layers:
        layer_map, _ = ref.gradcam(tiny, tiny.get_submodule(name), x32, ref.pick([1, 2]))
        torch.testing.assert_close(res.layer_maps[name], layer_map, atol=1e-5, rtol=1e-5)
    # Reference fusion: normalize each, upsample (bilinear) to the input, element-wise max.
    expected = torch.maximum(
        ref.upsample(ref.normalize(res.layer_maps["features.0"]), (32, 32)),
        ref.upsample(ref.normalize(res.layer_maps["features.3"]), (32, 32)),
    )
    torch.testing.assert_close(res.maps, expected, atol=1e-6, rtol=0)
    assert not torch.equal(res.maps, ref.normalize(res.layer_maps["features.0"]))
