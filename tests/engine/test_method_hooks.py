"""The contract's two per-method hooks: ``Method.objective`` (the targets the engine scores)
and ``Method.fuse`` (how the layers' maps become ``res.maps``)."""

from __future__ import annotations

import pytest
import torch

import camkit
import camkit.testing
from camkit.errors import PluginError

LAYERS = ["features.0", "features"]


class SecondClass(camkit.Method):
    """Grad-CAM that always explains class 1 + the caller's class, fused by the mean."""

    name = "test-objective"
    needs_gradients = True

    def objective(self, targets):
        return lambda scores: scores[:, 1] + scores[:, 0]

    def weights(self, ctx):
        return ctx.gradients.mean((2, 3))


class MeanFuse(SecondClass):
    def fuse(self, layer_maps, size):
        maps = [camkit.fuse([m], size=list(size)) for m in layer_maps]
        return torch.stack(maps).mean(0)


class BadFuse(SecondClass):
    def fuse(self, layer_maps, size):
        return torch.zeros(1, *size)


@pytest.fixture
def model():
    return camkit.testing.tiny_model()


def test_objective_replaces_the_targets(model):
    x = camkit.testing.tiny_inputs(2)
    ours = camkit.Extractor(SecondClass(), model, LAYERS)(x, [3, 4])
    plain = camkit.create("gradcam", model, LAYERS)(x, lambda s: s[:, 1] + s[:, 0])
    torch.testing.assert_close(ours.maps, plain.maps)
    assert ours.targets.tolist() == [-1, -1]


def test_fuse_replaces_the_engines_fusion(model):
    x = camkit.testing.tiny_inputs(2)
    res = camkit.Extractor(MeanFuse(), model, LAYERS)(x)
    expected = torch.stack([camkit.fuse([m], size=[16, 16]) for m in res.layer_maps.values()])
    torch.testing.assert_close(res.maps, expected.mean(0))
    default = camkit.Extractor(SecondClass(), model, LAYERS)(x)
    torch.testing.assert_close(
        default.maps, camkit.fuse(list(default.layer_maps.values()), size=[16, 16])
    )


def test_a_fusion_of_the_wrong_shape_is_a_plugin_error(model):
    with pytest.raises(PluginError, match="fused its layers into a wrong shape"):
        camkit.Extractor(BadFuse(), model, LAYERS)(camkit.testing.tiny_inputs(2))
