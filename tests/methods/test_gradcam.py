"""Grad-CAM against a direct computation: own hook, own autograd, own normalization."""

from __future__ import annotations

import pytest
import torch

import camkit

ATOL = 1e-5


@pytest.mark.parametrize("layer", ["features.3", "features"])
def test_tiny_model_matches_reference(tiny, x32, ref, informative, layer):
    targets = [1, 3]
    module = tiny.get_submodule(layer)
    layer_map, maps = ref.gradcam(tiny, module, x32, ref.pick(targets))
    _, grads, _ = ref.capture(tiny, module, x32, ref.pick(targets))
    informative(layer_map)

    res = camkit.create("gradcam", tiny, layer)(x32, targets=targets)

    assert res.maps.shape == (2, 32, 32)
    assert res.maps.dtype == torch.float32
    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.layer_maps[layer], layer_map, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(res.weights[layer], grads.mean((2, 3)), atol=ATOL, rtol=ATOL)
    assert res.targets.tolist() == targets
    assert res.method == "gradcam"


def test_default_target_is_the_predicted_class(tiny, x32, ref):
    predicted = tiny(x32).argmax(1).tolist()
    _, maps = ref.gradcam(tiny, tiny.features, x32, ref.pick(predicted))

    res = camkit.create("gradcam", tiny, "features")(x32)

    assert res.targets.tolist() == predicted
    torch.testing.assert_close(res.scores, tiny(x32).detach())
    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layer", ["layer4", "layer3"])
def test_resnet18_matches_reference(resnet18, x64, ref, informative, layer):
    """The issue's "done when": layer4 of resnet18 at 64x64 with targets [1, 2]."""
    layer_map, maps = ref.gradcam(resnet18, resnet18.get_submodule(layer), x64, ref.pick([1, 2]))
    informative(layer_map)

    res = camkit.create("gradcam", resnet18, layer)(x64, targets=[1, 2])

    assert res.maps.shape == (2, 64, 64)
    assert float(res.maps.min()) >= 0.0 and float(res.maps.max()) <= 1.0
    torch.testing.assert_close(res.maps, maps, atol=ATOL, rtol=0)
    torch.testing.assert_close(res.layer_maps[layer], layer_map, atol=ATOL, rtol=ATOL)


def test_alias_creates_the_same_method(tiny, x32):
    a = camkit.create("gradcam", tiny, "features")(x32, targets=[0, 1])
    b = camkit.create("Grad-CAM", tiny, "features")(x32, targets=[0, 1])
    assert b.method == "gradcam"
    torch.testing.assert_close(a.maps, b.maps, atol=0, rtol=0)
