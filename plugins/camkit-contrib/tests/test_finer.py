"""FinerTarget against a direct autograd re-implementation of Finer-CAM's objective with the
Grad-CAM formula, and (slow) against torchcam's and pytorch-grad-cam's ``FinerCAM``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from camkit_contrib.finer import FinerTarget
from torch import Tensor

import camkit
from camkit.errors import TargetError
from camkit.testing import tiny_inputs, tiny_model

LAYER = "features"


@pytest.fixture
def model() -> torch.nn.Module:
    return tiny_model(seed=7, num_classes=6, channels=6)


@pytest.fixture
def x() -> Tensor:
    return tiny_inputs(2, 16, seed=8)


def objective(scores: Tensor, weighting: str, strength: float, refs: list[list[int]], main):
    rows = []
    for b, row in enumerate(scores):
        c = main[b]
        if weighting == "mean":
            rows.append(row[c] - strength * torch.stack([row[d] for d in refs[b]]).mean())
        else:
            p = row.softmax(0)
            num = sum(p[d] * (row[c] - strength * row[d]) for d in refs[b])
            rows.append(num / (sum(p[d] for d in refs[b]) + 1e-9))
    return torch.stack(rows)


def closest(scores: Tensor, main: list[int], count: int) -> list[list[int]]:
    out = []
    for b, row in enumerate(scores.tolist()):
        others = [k for k in range(len(row)) if k != main[b]]
        out.append(sorted(others, key=lambda k: abs(row[k] - row[main[b]]))[:count])
    return out


@pytest.mark.parametrize("weighting", ["mean", "softmax"])
@pytest.mark.parametrize("class_index", [None, [2, 5]])
def test_finer_gradcam_is_gradcam_of_the_contrastive_objective(model, x, weighting, class_index):
    feats = model.features(x)
    scores = model.fc(model.pool(feats).flatten(1))
    main = scores.argmax(1).tolist() if class_index is None else class_index
    refs = closest(scores.detach(), main, 2)
    (grads,) = torch.autograd.grad(objective(scores, weighting, 0.8, refs, main).sum(), feats)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * feats.detach()).sum(1))
    target = FinerTarget(class_index, num_references=2, strength=0.8, weighting=weighting)  # type: ignore[arg-type]
    res = camkit.create("gradcam", model, LAYER)(x, target)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-5, atol=1e-6)


def test_finer_with_explicit_references_per_image(model, x):
    refs = [[0, 1], [3, 4]]
    feats = model.features(x)
    scores = model.fc(model.pool(feats).flatten(1))
    (grads,) = torch.autograd.grad(objective(scores, "mean", 0.6, refs, [5, 2]).sum(), feats)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * feats.detach()).sum(1))
    target = FinerTarget([5, 2], torch.tensor(refs))
    res = camkit.create("gradcam", model, LAYER)(x, target)
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-5, atol=1e-6)


def test_finer_with_strength_zero_is_the_plain_target(model, x):
    plain = camkit.create("gradcam", model, LAYER)(x, [1, 4]).layer_maps[LAYER]
    finer = camkit.create("gradcam", model, LAYER)(x, FinerTarget([1, 4], strength=0.0))
    torch.testing.assert_close(finer.layer_maps[LAYER], plain)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weighting": "max"}, "weighting"),
        ({"num_references": 0}, "num_references"),
        ({"class_index": 9}, "out of range"),
        ({"class_index": [1, 2, 3], "references": [[0], [1], [2]]}, None),
    ],
)
def test_finer_rejects_bad_arguments(model, x, kwargs, match):
    if match is None:
        # more entries than images is fine; fewer is an error
        target = FinerTarget(class_index=[1], references=[[0]])
        with pytest.raises(TargetError, match="one per image"):
            camkit.create("gradcam", model, LAYER)(x, target)
        return
    with pytest.raises(TargetError, match=match):
        camkit.create("gradcam", model, LAYER)(x, FinerTarget(**kwargs))


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))


def ours(resnet, images, target: FinerTarget) -> np.ndarray:
    res = camkit.create("gradcam", resnet, "layer3")(images, target)
    return res.layer_maps["layer3"].double().numpy()


def assert_close_maps(a: np.ndarray, b: np.ndarray) -> None:
    for p, q in zip(a, b):
        assert np.corrcoef(p.ravel(), q.ravel())[0, 1] >= 0.999


@pytest.mark.slow
def test_finer_matches_torchcam(resnet, images):
    methods = pytest.importorskip("torchcam.methods")
    with methods.FinerCAM(resnet, "layer3", input_shape=(3, 128, 128)) as extractor:
        scores = resnet(images)
        top = scores.argmax(1).tolist()
        theirs = extractor(top, scores, normalized=False)[0].detach().double().relu().numpy()
    assert_close_maps(ours(resnet, images, FinerTarget(top)), theirs)


@pytest.mark.slow
def test_finer_matches_grad_cam(resnet, images):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    finer = grad_cam.FinerCAM(resnet, [resnet.layer3])
    recorded: list[np.ndarray] = []
    compute = finer.base_cam.get_cam_image

    def record(*args, **kwargs):
        recorded.append(compute(*args, **kwargs))
        return recorded[-1]

    finer.base_cam.get_cam_image = record
    finer(input_tensor=images)
    finer.base_cam.activations_and_grads.release()
    theirs = np.maximum(np.asarray(recorded[0], dtype=np.float64), 0)
    target = FinerTarget(strength=1.0, weighting="softmax")
    assert_close_maps(ours(resnet, images, target), theirs)
