"""camkit.testing: the helpers plugin authors use must catch what they promise to catch."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.testing import TinyCNN, check_method, no_hooks_left, tiny_inputs, tiny_model


def test_tiny_model_depends_only_on_the_seed():
    rng = torch.get_rng_state()
    a, b, c = tiny_model(3), tiny_model(3), tiny_model(4)
    assert torch.equal(torch.get_rng_state(), rng), "tiny_model must not disturb the global RNG"
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert not a.training


def test_tiny_model_is_a_cnn_with_pooling_and_a_linear_head():
    model = tiny_model(num_classes=7, channels=5)
    x = tiny_inputs(3, 10)
    assert isinstance(model, TinyCNN)
    feats = model.features(x)
    assert feats.shape == (3, 5, 5, 5)
    expected = feats.mean((2, 3)) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), expected)


def test_tiny_inputs_are_seeded():
    torch.testing.assert_close(tiny_inputs(2, 8, seed=1), tiny_inputs(2, 8, seed=1))
    assert not torch.equal(tiny_inputs(2, 8, seed=1), tiny_inputs(2, 8, seed=2))
    assert tiny_inputs(4, 8, channels=1).shape == (4, 1, 8, 8)


def test_no_hooks_left_names_the_module_and_the_kind():
    model = tiny_model()
    no_hooks_left(model)
    handle = model.features[0].register_forward_hook(lambda *args: None)
    with pytest.raises(AssertionError, match=r"features\.0\._forward_hooks \(1\)"):
        no_hooks_left(model)
    no_hooks_left(model, allowed={"features.0._forward_hooks": 1})
    handle.remove()
    pre = model.register_forward_pre_hook(lambda *args: None)
    with pytest.raises(AssertionError, match=r"\(model\)\._forward_pre_hooks"):
        no_hooks_left(model)
    pre.remove()
    no_hooks_left(model)


@pytest.mark.parametrize("name", ["cam", "gradcam"])
def test_check_method_passes_builtin_methods(name):
    result = check_method(name)
    assert result.maps.shape == (2, 16, 16)
    assert result.method == name


def test_check_method_tolerates_the_users_own_hooks():
    model = tiny_model()
    seen = []
    handle = model.fc.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    check_method("gradcam", model, "features")
    assert seen, "the user's hook ran"
    handle.remove()


class GoodCAM(camkit.Method):
    """Grad-CAM weights, unregistered: check_method accepts a class."""

    name = "test-good"
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.gradients.mean((2, 3))


def test_check_method_accepts_an_unregistered_class():
    result = check_method(GoodCAM)
    reference = check_method("gradcam")
    torch.testing.assert_close(result.maps, reference.maps)


class PowerConfig(camkit.MethodConfig):
    power: float = camkit.Field(1.0, gt=0)


class PowerCAM(GoodCAM):
    Config = PowerConfig

    def weights(self, ctx: camkit.Context) -> Tensor:
        return super().weights(ctx).abs() ** self.config.power


def test_check_method_passes_config_to_the_class():
    reference = check_method("gradcam").weights["features"]
    torch.testing.assert_close(check_method(PowerCAM, power=2.0).weights["features"], reference**2)
    with pytest.raises(camkit.errors.ConfigError, match=r"method 'test-good'.*power"):
        check_method(PowerCAM, power=-1.0)
    assert "test-good" not in camkit.list_methods(), "the class is only registered for the check"


class BadName(GoodCAM):
    name = "Bad_Name"


class NoStrategy(camkit.Method):
    name = "test-no-strategy"


class TakenName(GoodCAM):
    name = "gradcam"


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (BadName, "lower-case letters, digits and hyphens"),
        (NoStrategy, "implements neither weights"),
        (TakenName, "claimed twice"),
    ],
)
def test_check_method_applies_the_registrys_rules_to_a_class(cls, message):
    with pytest.raises(camkit.errors.PluginError, match=message):
        check_method(cls)


class LeavesHook(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        ctx.model.fc.register_forward_hook(lambda *args: None)
        return super().weights(ctx)


class ChangesParameters(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        with torch.no_grad():
            ctx.model.fc.bias.add_(1.0)
        return super().weights(ctx)


class ChangesTraining(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        ctx.model.train()
        return super().weights(ctx)


class ChangesRequiresGrad(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        ctx.model.fc.weight.requires_grad_(False)
        return super().weights(ctx)


class CallsBackward(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        with torch.enable_grad(), torch.inference_mode(False):
            ctx.model(ctx.inputs.clone()).sum().backward()
        return super().weights(ctx)


class MixesTheBatch(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        w = super().weights(ctx)
        return w.mean(0, keepdim=True).expand_as(w)


class WrongShape(GoodCAM):
    def weights(self, ctx: camkit.Context) -> Tensor:
        return super().weights(ctx)[:, :3]


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (LeavesHook, r"hooks left on the model: fc\._forward_hooks"),
        (ChangesParameters, r"parameters or buffers: \['fc\.bias'\]"),
        (ChangesTraining, "training flag"),
        (ChangesRequiresGrad, r"requires_grad of parameters: \['fc\.weight'\]"),
        (CallsBackward, r"\.grad of parameters"),
        (MixesTheBatch, "alone vs in a batch of 2"),
    ],
)
def test_check_method_catches_broken_methods(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_method(cls)


def test_batch_consistency_can_be_turned_off():
    check_method(MixesTheBatch, batch_consistent=False)


def test_engine_errors_propagate():
    with pytest.raises(camkit.errors.PluginError, match="weights of shape"):
        check_method(WrongShape)


def test_check_method_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch of 2"):
        check_method("gradcam", inputs=tiny_inputs(3))
    with pytest.raises(TypeError, match=r"method name or a camkit\.Method subclass"):
        check_method(nn.Linear)  # type: ignore[arg-type]


def test_check_method_with_explicit_targets_and_model():
    model = tiny_model(seed=5, num_classes=3)
    result = check_method("gradcam", model, "features.2", targets=[2, 0])
    assert result.targets.tolist() == [2, 0]
    assert result.layer_maps["features.2"].shape == (2, 8, 8)
