"""The extractor's call flow: input checks, the method contract, the result object."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import camkit
from camkit.errors import InputError, PluginError


class GradientTimesActivation(camkit.Method):
    """Pixel weights: the map is ``sum_k dY/dA_k * A_k``, signed (no ReLU)."""

    name = "test-grad-x-act"
    needs_gradients = True
    relu = False

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.gradients


class FirstChannel(camkit.Method):
    """Computes its map directly: the layer's first channel."""

    name = "test-first-channel"

    def map(self, ctx: camkit.Context) -> Tensor:
        return ctx.activations[:, 0]


class WeightsFrom(camkit.Method):
    """Returns whatever ``make(activations)`` builds as its weights."""

    name = "test-weights-from"

    def __init__(self, make) -> None:
        super().__init__()
        self.make = make

    def weights(self, ctx: camkit.Context) -> Tensor:
        return self.make(ctx.activations)


class MapFrom(WeightsFrom):
    """Returns whatever ``make(activations)`` builds as its map."""

    name = "test-map-from"

    def map(self, ctx: camkit.Context) -> Tensor:
        return self.make(ctx.activations)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        ([[1.0]], "must be a torch.Tensor, not list"),
        (torch.zeros(3, 32, 32), r"\(3, 32, 32\): one image without a batch dimension"),
        (torch.zeros(32, 32), r"\(B, C, H, W\) images.*got shape \(32, 32\)"),
        (torch.zeros(1, 1, 3, 8, 8, 8), r"got shape \(1, 1, 3, 8, 8, 8\)"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "floating point, got torch.uint8"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.long), "floating point, got torch.int64"),
        (torch.zeros(0, 3, 32, 32), r"empty: shape \(0, 3, 32, 32\)"),
        (torch.zeros(2, 3, 0, 32), "empty"),
        (torch.full((2, 3, 32, 32), float("nan")), "NaN or Inf"),
        (torch.zeros(2, 3, 32, 32).index_fill_(3, torch.tensor([5]), float("inf")), "NaN or Inf"),
    ],
)
@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_bad_inputs(tiny, no_hooks, method, x, match):
    cam = camkit.create(method, tiny, "features")
    with pytest.raises(InputError, match=match) as info:
        cam(x)
    assert isinstance(info.value, ValueError)
    no_hooks(tiny)


def test_model_must_be_a_module():
    with pytest.raises(InputError, match=r"torch\.nn\.Module, not function"):
        camkit.create("gradcam", lambda x: x, "layer")


def test_result_fields(tiny, x32):
    res = camkit.create("gradcam", tiny, ["features.3", "features"])(x32, targets=[0, 4])
    assert res.method == "gradcam"
    assert res.layers == ["features.3", "features"]
    assert set(res.weights) == {"features.3", "features"}
    assert res.weights["features"].shape == (2, 6)
    assert res.scores.shape == (2, 5) and not res.scores.requires_grad
    assert res.targets.dtype == torch.long and res.targets.tolist() == [0, 4]
    assert all(not m.requires_grad for m in res.layer_maps.values())
    assert float(res.maps.min()) >= 0.0 and float(res.maps.max()) <= 1.0


def test_pixel_weights_without_relu(tiny, x32, ref):
    acts, grads, _ = ref.capture(tiny, tiny.features, x32, ref.pick([2, 3]))
    signed = (grads * acts).sum(1)
    assert bool((signed < 0).any())  # so a stray ReLU would show

    res = camkit.Extractor(GradientTimesActivation(), tiny, "features")(x32, targets=[2, 3])

    torch.testing.assert_close(res.layer_maps["features"], signed, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.weights["features"], grads, atol=1e-6, rtol=1e-5)
    expected = ref.upsample(ref.normalize(signed), (32, 32))
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)


def test_method_computing_its_map(tiny, x32, ref):
    acts, _, _ = ref.capture(tiny, tiny.features[3], x32, lambda s: s.sum(1))
    res = camkit.Extractor(FirstChannel(), tiny, "features.3")(x32)
    # The engine applies the method's ReLU; the conv's output still has its negative values.
    torch.testing.assert_close(res.layer_maps["features.3"], acts[:, 0].clamp_min(0))
    assert res.weights == {}


def test_zero_weights_give_zero_maps_not_nan(tiny, x32):
    res = camkit.Extractor(WeightsFrom(lambda a: torch.zeros(a.shape[:2])), tiny, "features")(x32)
    assert not bool(res.maps.isnan().any())
    torch.testing.assert_close(res.maps, torch.zeros(2, 32, 32))


@pytest.mark.parametrize(
    ("method", "match"),
    [
        (
            WeightsFrom(lambda a: a.mean((2, 3))[:, :-1]),
            r"shape \(2, 5\) for layer 'features'; expected \(2, 6\) or \(2, 6, 16, 16\)",
        ),
        (WeightsFrom(lambda a: a[:, :, :-1]), r"weights of shape \(2, 6, 15, 16\)"),
        (WeightsFrom(lambda a: a.mean((2, 3)).tolist()), "weights of shape list"),
        (
            MapFrom(lambda a: a.mean(1)[:, :-1]),
            r"map of shape \(2, 15, 16\).*expected \(2, 16, 16\)",
        ),
        (WeightsFrom(lambda a: torch.full(a.shape[:2], float("nan"))), "non-finite"),
    ],
)
def test_method_breaking_the_contract(tiny, x32, no_hooks, method, match):
    cam = camkit.Extractor(method, tiny, "features")
    with pytest.raises(PluginError, match=match):
        cam(x32)
    no_hooks(tiny)


def test_repr_names_method_and_layers(tiny):
    assert repr(camkit.create("gradcam", tiny, "features")) == (
        "Extractor(method='gradcam', layers=['features'])"
    )


class ReadsGradientsUndeclared(camkit.Method):
    """Reads ``ctx.gradients`` without declaring ``needs_gradients``."""

    name = "test-undeclared-gradients"

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.gradients.mean((2, 3))


def test_gradients_of_a_method_that_did_not_declare_them_are_a_plugin_error(tiny):
    extractor = camkit.Extractor(ReadsGradientsUndeclared(), tiny, "features")
    with pytest.raises(
        PluginError,
        match=r"'test-undeclared-gradients' reads ctx.gradients.*"
        r"needs_gradients = True",
    ):
        extractor(torch.randn(2, 3, 16, 16))


def test_context_is_built_from_the_call_services(tiny):
    seen: list[camkit.Context] = []

    class Probe(camkit.Method):
        name = "test-probe-context"
        needs_gradients = True

        def weights(self, ctx: camkit.Context) -> Tensor:
            seen.append(ctx)
            return ctx.gradients.mean((2, 3))

    x = torch.randn(2, 3, 16, 16)
    res = camkit.Extractor(Probe(), tiny, "features")(x)
    (ctx,) = seen
    assert ctx.layer == "features" and torch.equal(ctx.inputs, x)
    assert torch.equal(ctx.targets, res.targets) and torch.equal(ctx.scores, res.scores)
    torch.testing.assert_close(
        ctx.baseline_scores, res.scores.gather(1, res.targets[:, None])[:, 0]
    )
    # The gradients are d(target score)/d(activations): check against autograd directly.
    feats = tiny.features(x).detach().requires_grad_(True)
    head = tiny.fc(tiny.pool(feats).flatten(1)).gather(1, res.targets[:, None]).sum()
    (expected,) = torch.autograd.grad(head, feats)
    torch.testing.assert_close(ctx.gradients, expected)
    assert ctx.gradients.shape == ctx.activations.shape
