"""Ablation-CAM over several layers in one call: against a direct re-implementation (each
channel of each layer zeroed by a hook, the relative score drop as its weight) and (slow)
against pytorch-grad-cam's ``AblationCAM`` with several target layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

import camkit
import camkit.testing

LAYERS = ["layer3", "layer4"]
TINY_LAYERS = ["features.0", "features"]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return camkit.testing.tiny_model(channels=8)


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def ours(resnet, images) -> camkit.CAMResult:
    return camkit.create("ablationcam", resnet, LAYERS, batch_size=256)(images, [3, 7])


def direct_ablation(model, layer: torch.nn.Module, image: Tensor, target: int) -> Tensor:
    """``(h, w)`` Ablation-CAM map of one image: ReLU(sum_k (y - y_k) / y * A_k)."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: captured.append(o.detach()))
    with torch.no_grad():
        y = model(image[None])[0, target]
    handle.remove()
    acts = captured[0][0]
    channels = acts.shape[0]
    drops = []
    for start in range(0, channels, 128):
        rows = torch.arange(start, min(start + 128, channels))

        def zero(_m, _i, out, rows=rows):
            out = out.clone()
            out[torch.arange(len(rows)), rows] = 0
            return out

        handle = layer.register_forward_hook(zero)
        with torch.no_grad():
            drops.append(model(image[None].expand(len(rows), -1, -1, -1))[:, target])
        handle.remove()
    weights = (y - torch.cat(drops)) / y
    return torch.relu((weights[:, None, None] * acts).sum(0))


def test_several_layers_are_each_ablated(tiny):
    images = camkit.testing.tiny_inputs(2, 16)
    ours = camkit.create("ablationcam", tiny, TINY_LAYERS)(images, [3, 1])
    assert ours.layers == TINY_LAYERS
    for name in TINY_LAYERS:
        layer = tiny.get_submodule(name)
        expected = torch.stack(
            [direct_ablation(tiny, layer, images[b], t) for b, t in enumerate([3, 1])]
        )
        torch.testing.assert_close(ours.layer_maps[name], expected, rtol=1e-3, atol=1e-4)
    # fused: each normalized, resized to the input, their maximum
    fused = []
    for name in TINY_LAYERS:
        m = ours.layer_maps[name]
        lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
        up = F.interpolate(((m - lo) / (hi - lo))[:, None], size=(16, 16), mode="bilinear")
        fused.append(up[:, 0])
    torch.testing.assert_close(ours.maps, torch.stack(fused).amax(0), atol=1e-5, rtol=1e-5)


def test_one_layer_call_equals_the_several_layer_call(tiny):
    images = camkit.testing.tiny_inputs(2, 16)
    both = camkit.create("ablationcam", tiny, TINY_LAYERS)(images, [3, 1])
    for name in TINY_LAYERS:
        alone = camkit.create("ablationcam", tiny, name)(images, [3, 1])
        torch.testing.assert_close(alone.layer_maps[name], both.layer_maps[name])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.slow
def test_several_layers_match_grad_cam(resnet, images, ours):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from camkit.compat.pytorch_grad_cam import AblationCAM

    layers = [resnet.layer3, resnet.layer4]
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
    peer = grad_cam.AblationCAM(resnet, layers, batch_size=256)
    recorded: list[np.ndarray] = []
    compute = peer.get_cam_image

    def record(*args, **kwargs):
        recorded.append(compute(*args, **kwargs))
        return recorded[-1]

    peer.get_cam_image = record
    theirs = peer(input_tensor=images, targets=targets)
    peer.activations_and_grads.release()
    # per layer, the raw maps (pytorch-grad-cam applies its ReLU when it scales)
    for name, raw in zip(LAYERS, recorded):
        raw = np.maximum(np.asarray(raw, dtype=np.float64), 0)
        for b in range(2):
            assert pearson(ours.layer_maps[name][b].double().numpy(), raw[b]) >= 0.999
    # fused: pytorch-grad-cam averages the layers' scaled maps, camkit takes their maximum;
    # the compat shim averages, and camkit's fusion of the peer's layer maps is camkit's
    compat = AblationCAM(resnet, layers, batch_size=256)(images, targets)
    peer_max = camkit.fuse(
        [torch.from_numpy(np.maximum(np.asarray(r), 0)).float() for r in recorded], size=(64, 64)
    )
    for b in range(2):
        assert pearson(compat[b], theirs[b]) >= 0.999
        assert pearson(ours.maps[b].numpy(), peer_max[b].numpy()) >= 0.999
