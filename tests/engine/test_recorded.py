"""``Extractor.explain_recorded``: the clean pass taken from a forward the caller ran."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import ConfigError, GradientError, InputError, LayerNotFoundError

METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "cam"]


def recorded_forward(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(the layer's output, scores)`` of one forward, joined by autograd."""
    store: dict[str, Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.update(out=out))
    try:
        scores = model(x)
    finally:
        handle.remove()
    return store["out"], scores


def counting_forwards(model: nn.Module) -> list[int]:
    """A list that grows by one on each forward of ``model`` (the hook stays: remove it)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, _i: calls.append(1))
    return calls


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("targets", [[1, 3], 2, None])
def test_equals_a_call(tiny, x32, method, targets):
    cam = camkit.create(method, tiny, "features")
    expected = cam(x32, targets)
    output, scores = recorded_forward(tiny, tiny.features, x32)
    got = cam.explain_recorded(x32, [output], scores, targets)
    torch.testing.assert_close(got.layer_maps["features"], expected.layer_maps["features"])
    torch.testing.assert_close(got.maps, expected.maps)
    assert got.weights.keys() == expected.weights.keys()
    for name in got.weights:
        torch.testing.assert_close(got.weights[name], expected.weights[name])
    assert got.targets.tolist() == expected.targets.tolist()
    torch.testing.assert_close(got.scores, expected.scores)
    assert (got.method, got.layers) == (expected.method, expected.layers)


def test_grad_cam_formula_without_a_second_forward(tiny, x32, ref, informative):
    cam = camkit.create("gradcam", tiny, "features")
    output, scores = recorded_forward(tiny, tiny.features, x32)
    calls = counting_forwards(tiny)
    try:
        got = cam.explain_recorded(x32, [output], scores, [4, 0])
    finally:
        tiny._forward_pre_hooks.clear()
    assert calls == []
    layer_map, final = ref.gradcam(tiny, tiny.features, x32, ref.pick([4, 0]))
    informative(layer_map)
    torch.testing.assert_close(got.layer_maps["features"], layer_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.maps, final, rtol=1e-5, atol=1e-6)


def test_two_layers_and_callable_targets(tiny, x32):
    cam = camkit.create("gradcam", tiny, ["features.0", "features"])

    def target(scores: Tensor) -> Tensor:
        return scores[:, 1] - scores[:, 0]

    expected = cam(x32, target)
    store: dict[str, Tensor] = {}

    def first(_module: nn.Module, _inputs: object, out: Tensor) -> Tensor:
        store["first"] = out
        return out.clone()  # the in-place ReLU then changes the copy, as with camkit's hooks

    handles = [
        tiny.features[0].register_forward_hook(first),
        tiny.features.register_forward_hook(lambda _m, _i, out: store.update(last=out)),
    ]
    try:
        scores = tiny(x32)
    finally:
        for handle in handles:
            handle.remove()
    got = cam.explain_recorded(x32, [store["first"], store["last"]], scores, target)
    for name in ("features.0", "features"):
        torch.testing.assert_close(got.layer_maps[name], expected.layer_maps[name])
    torch.testing.assert_close(got.maps, expected.maps)
    assert got.targets.tolist() == [-1, -1]


def test_a_second_backward_is_a_gradient_error(tiny, x32):
    cam = camkit.create("gradcam", tiny, "features")
    output, scores = recorded_forward(tiny, tiny.features, x32)
    cam.explain_recorded(x32, [output], scores, 1)
    with pytest.raises(GradientError, match="already freed"):
        cam.explain_recorded(x32, [output], scores, 1)


def test_no_graph_is_a_gradient_error(tiny, x32):
    cam = camkit.create("gradcam", tiny, "features")
    with torch.no_grad():
        output, scores = recorded_forward(tiny, tiny.features, x32)
    with pytest.raises(GradientError, match="does not depend"):
        cam.explain_recorded(x32, [output], scores, 1)


@pytest.mark.parametrize(
    ("method", "options"),
    [("cam", {}), ("scorecam", {"batch_size": 8})],  # scorecam: passes beyond the clean one
)
def test_methods_without_gradients_need_no_graph(tiny, x32, method, options):
    cam = camkit.create(method, tiny, "features", **options)
    expected = cam(x32, [1, 3])
    with torch.no_grad():
        output, scores = recorded_forward(tiny, tiny.features, x32)
    got = cam.explain_recorded(x32, [output], scores, [1, 3])
    torch.testing.assert_close(got.layer_maps["features"], expected.layer_maps["features"])


def test_maps_are_fused_when_first_read(tiny, x32):
    cam = camkit.create("gradcam", tiny, "features")
    output, scores = recorded_forward(tiny, tiny.features, x32)
    got = cam.explain_recorded(x32, [output], scores, 1)
    assert got._maps is None
    first = got.maps
    assert got.maps is first and tuple(first.shape) == (2, 32, 32)
    assert got == got  # a dataclass: compares through the property
    copied = dataclasses.replace(got, method="copy")
    assert copied.maps is first and copied.method == "copy"
    restored = pickle.loads(pickle.dumps(got))
    torch.testing.assert_close(restored.maps, first)


def test_train_mode_buffers_are_restored(x32, no_hooks):
    from tests.conftest import TinyNet

    torch.manual_seed(0)
    model = TinyNet().train()
    cam = camkit.create("scorecam", model, "features", batch_size=8)
    with torch.no_grad():
        output, scores = recorded_forward(model, model.features, x32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam.explain_recorded(x32, [output], scores, 1)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training
    no_hooks(model)


@pytest.mark.parametrize(
    ("options", "targets"),
    [({"aug_smooth": True}, 1), ({}, "all-positive")],
)
def test_what_one_recorded_pass_cannot_give(tiny, x32, options, targets):
    cam = camkit.create("gradcam", tiny, "features", **options)
    output, scores = recorded_forward(tiny, tiny.features, x32)
    with pytest.raises(ConfigError, match="explains one recorded pass"):
        cam.explain_recorded(x32, [output], scores, targets)


def test_layers_must_be_named(tiny, x32):
    cam = camkit.create("gradcam", tiny)
    output, scores = recorded_forward(tiny, tiny.features, x32)
    with pytest.raises(LayerNotFoundError, match="create it with a layer"):
        cam.explain_recorded(x32, [output], scores, 1)


def test_one_output_per_layer(tiny, x32):
    cam = camkit.create("gradcam", tiny, "features")
    output, scores = recorded_forward(tiny, tiny.features, x32)
    with pytest.raises(InputError, match=r"one recorded output per layer \(1: features\)"):
        cam.explain_recorded(x32, [output, output], scores, 1)
