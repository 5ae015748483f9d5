"""Hook lifecycle and model state: what a call leaves behind (nothing), in every grad mode."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import GradientError, LayerError

METHODS = ["cam", "gradcam"]


class Exploding(nn.Module):
    """Runs the tiny model's features, then fails, as a buggy model would mid-forward."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.features = tiny.features
        self.fc = tiny.fc

    def forward(self, x: Tensor) -> Tensor:
        self.features(x)
        raise RuntimeError("boom")


class Unused(nn.Module):
    """A model with a layer its forward never calls."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.tiny = tiny
        self.spare = nn.Conv2d(3, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tiny(x)


@pytest.mark.parametrize("method", METHODS)
def test_no_hooks_after_a_call(tiny, x32, no_hooks, method):
    cam = camkit.create(method, tiny, ["features.3", "features"])
    cam(x32, targets=[0, 1])
    no_hooks(tiny)


@pytest.mark.parametrize("method", METHODS)
def test_no_hooks_after_the_model_raises(tiny, x32, no_hooks, method):
    model = Exploding(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        camkit.create(method, model, "features")(x32, targets=[0, 1])
    no_hooks(model)


def test_no_hooks_after_auto_locate_raises(tiny, x32, no_hooks):
    model = Exploding(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        camkit.create("gradcam", model)(x32)
    no_hooks(model)


@pytest.mark.parametrize("method", METHODS)
def test_layer_that_never_runs(tiny, x32, no_hooks, method):
    model = Unused(tiny)
    with pytest.raises(LayerError, match="'spare' did not run"):
        camkit.create(method, model, "spare")(x32, targets=[0, 1])
    no_hooks(model)


def test_two_extractors_share_a_model(tiny, x32, ref, no_hooks):
    gradcam = camkit.create("gradcam", tiny, "features")
    cam = camkit.create("cam", tiny, "features")
    first = gradcam(x32, targets=[1, 2])
    cam(x32, targets=[1, 2])
    again = gradcam(x32, targets=[1, 2])

    _, expected = ref.gradcam(tiny, tiny.features, x32, ref.pick([1, 2]))
    torch.testing.assert_close(first.maps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(again.maps, first.maps, atol=0, rtol=0)
    no_hooks(tiny)


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything a call could disturb: modes, grad flags, grads, parameters and buffers."""
    return {
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad_ids": {
            n: None if p.grad is None else id(p.grad) for n, p in model.named_parameters()
        },
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    for key in ("training", "requires_grad", "grad_ids"):
        assert before[key] == after[key], key
    for key in ("grads", "params", "buffers"):
        assert before[key].keys() == after[key].keys()
        for name, value in before[key].items():
            if value is None:
                assert after[key][name] is None, name
            else:
                assert torch.equal(value, after[key][name]), f"{key} {name}"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("auto_layer", [False, True])
def test_model_state_is_untouched(tiny, x32, method, auto_layer):
    # Train mode (BatchNorm would update its running statistics), one frozen submodule, one
    # submodule in eval mode, one parameter with an existing gradient and one without.
    tiny.train()
    tiny.features[3].eval()
    tiny.features[0].weight.requires_grad_(False)
    tiny.fc.weight.grad = torch.full_like(tiny.fc.weight, 0.5)
    before = snapshot(tiny)

    camkit.create(method, tiny, None if auto_layer else "features")(x32, targets=[0, 1])

    after = snapshot(tiny)
    assert_same_state(before, after)
    assert after["grads"]["fc.bias"] is None
    assert tiny.features[1].num_batches_tracked.item() == 0


def test_state_untouched_when_locating_with_input_shape(tiny):
    tiny.train()
    before = snapshot(tiny)
    camkit.create("gradcam", tiny, input_shape=(3, 32, 32))
    assert_same_state(before, snapshot(tiny))


def test_train_mode_gradcam_matches_reference_in_train_mode(tiny, x32, ref):
    """In train mode BatchNorm uses batch statistics; camkit explains that same forward."""
    tiny.train()
    _, expected = ref.gradcam(tiny, tiny.features, x32, ref.pick([1, 2]))
    res = camkit.create("gradcam", tiny, "features")(x32, targets=[1, 2])
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen", "frozen+no_grad"])
def test_every_grad_mode(tiny, x32, ref, method, mode):
    if method == "gradcam":
        _, expected = ref.gradcam(tiny, tiny.features, x32, ref.pick([3, 0]))
    else:
        _, expected = ref.cam(tiny, tiny.features, tiny.fc, x32, [3, 0])
    if "frozen" in mode:
        tiny.requires_grad_(False)
    cam = camkit.create(method, tiny, "features")
    if mode == "inference_mode":
        with torch.inference_mode():
            x = x32.clone()  # an inference tensor, as a caller in that mode would have
            res = cam(x, targets=[3, 0])
            assert torch.is_inference_mode_enabled()
    elif "no_grad" in mode:
        with torch.no_grad():
            res = cam(x32, targets=[3, 0])
            assert not torch.is_grad_enabled()
    else:
        res = cam(x32, targets=[3, 0])
    assert torch.is_grad_enabled()
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)
    assert all(p.grad is None for p in tiny.parameters())
    assert not res.maps.requires_grad


class Detaching(nn.Module):
    """Cuts the graph after ``features``, as models with a frozen backbone sometimes do."""

    def __init__(self, tiny: nn.Module) -> None:
        super().__init__()
        self.features = tiny.features
        self.side = nn.Conv2d(3, 1, 1)
        self.fc = tiny.fc

    def forward(self, x: Tensor) -> Tensor:
        self.side(x)  # runs, but its output is thrown away
        return self.fc(self.features(x).detach().mean((2, 3)))


@pytest.mark.parametrize(
    ("layer", "frozen", "match"),
    [
        ("features", False, "does not depend on layer 'features'"),
        ("side", False, "does not depend on layer 'side'"),
        ("features", True, "does not depend on the captured layers"),
    ],
)
def test_layer_the_scores_do_not_depend_on(tiny, x32, no_hooks, layer, frozen, match):
    model = Detaching(tiny)
    model.fc.requires_grad_(not frozen)
    with pytest.raises(GradientError, match=match):
        camkit.create("gradcam", model, layer)(x32)
    no_hooks(model)


def test_concurrent_extractors_on_one_model(tiny, x32, ref):
    """Each thread's hooks act only for that thread, so concurrent calls do not mix."""
    expected = {
        name: ref.gradcam(tiny, tiny.get_submodule(name), x32, ref.pick([1, 2]))[1]
        for name in ("features", "features.0")
    }
    extractors = {name: camkit.create("gradcam", tiny, name) for name in expected}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            (name, pool.submit(extractors[name], x32, [1, 2]))
            for _ in range(5)
            for name in expected
        ]
        for name, future in futures:
            torch.testing.assert_close(future.result().maps, expected[name], atol=1e-5, rtol=0)


def test_double_precision_model(tiny, x32, ref):
    model, x = tiny.double(), x32.double()
    layer_map, maps = ref.gradcam(model, model.features, x, ref.pick([0, 3]))
    res = camkit.create("gradcam", model, "features")(x, targets=[0, 3])
    assert res.maps.dtype == torch.float32
    assert res.layer_maps["features"].dtype == torch.float32
    torch.testing.assert_close(res.layer_maps["features"], layer_map, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.maps, maps.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_input_requiring_grad_is_left_alone(tiny, x32, method):
    x = x32.clone().requires_grad_(True)
    camkit.create(method, tiny, "features")(x, targets=[0, 1])
    assert x.grad is None


# -- in-place ops after the hooked layer --------------------------------------------------


def naive_activation(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    """What a hook that keeps the layer's output without copying ends up holding."""
    store: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[0]


@pytest.mark.parametrize("method", METHODS)
def test_inplace_relu_after_tiny_conv(tiny, x32, ref, method):
    conv = tiny.features[3]  # followed by ReLU(inplace=True)
    acts, _, _ = ref.capture(tiny, conv, x32, lambda s: s.sum(1))
    # The test is only meaningful if the in-place ReLU really overwrites the conv's output.
    assert bool((acts < 0).any())
    assert torch.equal(naive_activation(tiny, conv, x32), acts.clamp_min(0))

    if method == "gradcam":
        layer_map, maps = ref.gradcam(tiny, conv, x32, ref.pick([1, 4]))
    else:
        layer_map, maps = ref.cam(tiny, conv, tiny.fc, x32, [1, 4])
    res = camkit.create(method, tiny, "features.3")(x32, targets=[1, 4])

    torch.testing.assert_close(res.layer_maps["features.3"], layer_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.maps, maps, atol=1e-5, rtol=0)


def test_inplace_relu_after_vgg11_features_18(vgg11, x64, ref, informative):
    conv = vgg11.features[18]
    acts, _, _ = ref.capture(vgg11, conv, x64, lambda s: s.sum(1))
    assert bool((acts < 0).any())
    assert torch.equal(naive_activation(vgg11, conv, x64), acts.clamp_min(0))

    layer_map, maps = ref.gradcam(vgg11, conv, x64, ref.pick([2, 6]))
    informative(layer_map)
    res = camkit.create("gradcam", vgg11, "features.18")(x64, targets=[2, 6])

    torch.testing.assert_close(res.layer_maps["features.18"], layer_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.maps, maps, atol=1e-5, rtol=0)


# -- the graph starts at the target layer -----------------------------------------------------


def _grad_modes(model: nn.Module, run: object) -> dict[str, bool]:
    """Whether each submodule of ``model`` started with autograd recording, during ``run()``."""
    modes: dict[str, bool] = {}

    def record(name: str):
        def hook(_module: nn.Module, _args: object) -> None:
            modes.setdefault(name, torch.is_grad_enabled())

        return hook

    handles = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        run()  # type: ignore[operator]
    finally:
        for handle in handles:
            handle.remove()
    return modes


def test_no_graph_is_recorded_before_the_target_layer(tiny, x32):
    cam = camkit.create("gradcam", tiny, "features.3")
    modes = _grad_modes(tiny, lambda: cam(x32))
    assert not any(modes[f"features.{i}"] for i in range(3))  # before the layer
    # (the layer's own probe runs before camkit's pre-hook, which is attached later)
    assert modes["features.4"] and modes["pool"] and modes["fc"]
    assert torch.is_grad_enabled()  # the caller's mode is back


@pytest.mark.parametrize("caller", [torch.no_grad, torch.enable_grad, torch.inference_mode])
def test_grad_mode_is_restored_also_when_the_model_raises(tiny, caller):
    with caller():
        before = torch.is_grad_enabled()
        with pytest.raises(RuntimeError, match="boom"):
            camkit.create("gradcam", Exploding(tiny), "features.3")(torch.randn(1, 3, 8, 8))
        assert torch.is_grad_enabled() == before


class Gated(nn.Module):
    """TinyNet with a stop-gradient gate after the layer: ``fc(pooled * no_grad(sigmoid))``."""

    def __init__(self, tiny: nn.Module, whole_forward_no_grad: bool = False) -> None:
        super().__init__()
        self.tiny = tiny
        self.whole_forward_no_grad = whole_forward_no_grad

    def forward(self, x: Tensor) -> Tensor:
        if self.whole_forward_no_grad:
            with torch.no_grad():
                return self.tiny(x)
        pooled = self.tiny.pool(self.tiny.features(x)).flatten(1)
        with torch.no_grad():
            gate = torch.sigmoid(pooled)
        return self.tiny.fc(pooled * gate)


def test_a_stop_gradient_after_the_layer_is_respected(tiny, x32, ref):
    # The gate is a constant for autograd: the reference's gradients (full graph, the model's
    # own no-grad region) must equal camkit's (graph from the layer on).
    model = Gated(tiny).eval()
    res = camkit.create("gradcam", model, "tiny.features")(x32, targets=[1, 3])
    acts, grads, _ = ref.capture(model, tiny.features, x32, lambda s: s[:, [1, 3]].diagonal())
    torch.testing.assert_close(res.weights["tiny.features"], grads.mean((2, 3)))
    torch.testing.assert_close(
        res.layer_maps["tiny.features"], ref.weighted(grads.mean((2, 3)), acts)
    )


def test_a_forward_under_no_grad_from_the_layer_on_is_explained(tiny, x32):
    # The whole forward runs in the model's own no-grad region; recording starts at the layer,
    # so Grad-CAM sees the same gradients as on the plain model.
    plain = camkit.create("gradcam", tiny, "features")(x32)
    wrapped = camkit.create("gradcam", Gated(tiny, whole_forward_no_grad=True), "tiny.features")
    res = wrapped(x32)
    torch.testing.assert_close(res.weights["tiny.features"], plain.weights["features"])
    torch.testing.assert_close(res.maps, plain.maps)
