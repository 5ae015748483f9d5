"""CAM-multiplied confidence change and ARCC against direct re-implementations, and (slow)
against pytorch-grad-cam's ``CamMultImageConfidenceChange`` and ``ARCC``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import camkit
from camkit.metrics import (
    arcc,
    cam_mult_confidence_change,
    coherency,
    complexity,
    road_combined,
)
from camkit.testing import tiny_model


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_model(seed=4, num_classes=5)


@pytest.fixture
def x() -> Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(9))


@pytest.fixture
def maps() -> Tensor:
    return torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(10))


TARGETS = torch.tensor([1, 0, 4])


def logits(model: torch.nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("softmax", [True, False])
def test_cam_mult_change_is_multiplied_minus_clean(model, x, maps, softmax):
    before, after = logits(model, x), logits(model, x * maps[:, None])
    if softmax:
        before, after = before.softmax(1), after.softmax(1)
    rows = torch.arange(3)
    expected = after[rows, TARGETS] - before[rows, TARGETS]
    ours = cam_mult_confidence_change(model, x, maps, TARGETS, softmax=softmax)
    torch.testing.assert_close(ours, expected)


def test_complexity_is_the_mean_absolute_value():
    maps = torch.tensor([[[0.0, 1.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(complexity(maps), torch.tensor([0.5, 0.0]))


def test_coherency_compares_the_map_with_the_map_of_the_explanation(model, x):
    cam = camkit.create("gradcam", model, "features")
    maps = cam(x, TARGETS).maps
    again = cam(x * maps[:, None], TARGETS).maps
    expected = [(np.corrcoef(a.ravel(), m.ravel())[0, 1] + 1) / 2 for a, m in zip(again, maps)]
    np.testing.assert_allclose(coherency(cam, x, maps, TARGETS).numpy(), expected, rtol=1e-5)
    # a plain callable returning maps is accepted too
    plain = coherency(lambda i, t: cam(i, t).maps, x, maps, TARGETS)
    np.testing.assert_allclose(plain.numpy(), expected, rtol=1e-5)


def test_coherency_rejects_an_explainer_without_maps(x, maps):
    with pytest.raises(TypeError, match="maps"):
        coherency(lambda i, t: "nope", x, maps, TARGETS)


def test_arcc_is_the_harmonic_mean_of_its_parts(model, x):
    cam = camkit.create("gradcam", model, "features")
    maps = cam(x, TARGETS).maps
    score = arcc(model, cam, x, maps, TARGETS, removed=(0.3, 0.6), noise=0.0)
    road = road_combined(model, x, maps, TARGETS, removed=(0.3, 0.6), noise=0.0)
    confidence = (2 * road).clamp(0, 1)
    coherent = coherency(cam, x, maps, TARGETS)
    simple = 1 - complexity(maps)
    eps = 1e-8
    expected = 3 / (1 / (coherent + eps) + 1 / (simple + eps) + 1 / (confidence + eps))
    torch.testing.assert_close(score.confidence, confidence)
    torch.testing.assert_close(score.coherency, coherent)
    torch.testing.assert_close(score.complexity, complexity(maps))
    torch.testing.assert_close(score.arcc, expected)


@pytest.mark.slow
@pytest.mark.parametrize("softmax", [False, True])
def test_cam_mult_matches_grad_cam(model, x, maps, softmax):
    metrics = pytest.importorskip("pytorch_grad_cam.metrics.cam_mult_image")
    targets_peer = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    cls = (
        targets_peer.ClassifierOutputSoftmaxTarget
        if softmax
        else targets_peer.ClassifierOutputTarget
    )
    theirs = metrics.CamMultImageConfidenceChange()(
        x, maps.numpy(), [cls(int(t)) for t in TARGETS], model
    )
    ours = cam_mult_confidence_change(model, x, maps, TARGETS, softmax=softmax)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)
    # the peer's drop and increase are the documented functions of the change
    peer_targets = [cls(int(t)) for t in TARGETS]
    drop = metrics.DropInConfidence()(x, maps.numpy(), peer_targets, model)
    np.testing.assert_allclose((-ours).clamp(min=0).numpy(), drop, atol=1e-6)
    increase = metrics.IncreaseInConfidence()(x, maps.numpy(), peer_targets, model)
    np.testing.assert_array_equal((ours > 0).float().numpy(), increase)


@pytest.mark.slow
def test_arcc_matches_grad_cam(monkeypatch, model, x):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics import arcc as arcc_peer
    from pytorch_grad_cam.metrics import road as road_peer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    monkeypatch.setattr(
        road_peer.NoisyLinearImputer.__init__, "__defaults__", (0.0, road_peer.neighbors_weights)
    )
    base = grad_cam.GradCAM(model=model, target_layers=[model.features])
    peer_targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in TARGETS]
    # distinct values: ROAD splits ties at its threshold by position where the peer removes
    # them all (see docs/methods.md), and ReLU'd maps have many tied zeros
    jitter = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(11)).numpy()
    cams = 0.9 * base(input_tensor=x, targets=peer_targets) + 0.1 * jitter

    def explain(images: Tensor, targets: Tensor) -> Tensor:
        # the peer's own method recomputes the maps, so only the metric is compared
        return torch.from_numpy(base(input_tensor=images, targets=peer_targets))

    theirs = arcc_peer.ARCC(base)(x, cams, peer_targets, model)
    ours = arcc(model, explain, x, torch.from_numpy(cams), TARGETS, noise=0.0, softmax=True)
    np.testing.assert_allclose(ours.arcc.numpy(), theirs, atol=1e-5)
    coherent = arcc_peer.Coherency()(x, cams, peer_targets, model, base)
    np.testing.assert_allclose(ours.coherency.numpy(), coherent, atol=1e-5)
    np.testing.assert_allclose(ours.complexity.numpy(), arcc_peer.Complexity()(cams), atol=1e-6)
    base.activations_and_grads.release()
