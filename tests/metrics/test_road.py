"""ROAD and its noisy linear imputation against a dense re-implementation of the linear
system, and (slow) against pytorch-grad-cam's ROAD metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from camkit.metrics import (
    noisy_linear_imputation,
    removal_mask,
    road,
    road_combined,
    target_scores,
)
from camkit.testing import tiny_model

EDGE, CORNER = 1 / 6, 1 / 12


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Build the ROAD system one pixel at a time and solve it densely: (C, H, W), (H, W)."""
    _, height, width = image.shape
    unknown = [(i, j) for i in range(height) for j in range(width) if removed[i, j]]
    index = {p: n for n, p in enumerate(unknown)}
    system = np.zeros((len(unknown), len(unknown)))
    rhs = np.zeros((len(unknown), image.shape[0]))
    for n, (i, j) in enumerate(unknown):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                y, x = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= y < height and 0 <= x < width):
                    continue
                weight = EDGE if di == 0 or dj == 0 else CORNER
                system[n, n] += weight
                if removed[y, x]:
                    system[n, index[(y, x)]] -= weight
                else:
                    rhs[n] += weight * image[:, y, x]
    solution = np.linalg.solve(system, rhs)
    out = image.astype(np.float64).copy()
    for n, (i, j) in enumerate(unknown):
        out[:, i, j] = solution[n]
    return out


@pytest.fixture
def images() -> Tensor:
    return torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def saliency() -> Tensor:
    return torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_imputation_solves_the_neighbour_mean_system(images, saliency, share, order):
    removed = removal_mask(saliency, share, order)
    filled = noisy_linear_imputation(images, removed, noise=0.0)
    for b in range(images.shape[0]):
        expected = dense_imputation(images[b].double().numpy(), removed[b].numpy())
        np.testing.assert_allclose(filled[b].double().numpy(), expected, atol=1e-5)


def test_imputation_of_a_single_hole_is_the_neighbour_mean():
    image = torch.arange(20.0).reshape(1, 1, 4, 5) ** 2
    hole = torch.zeros(1, 4, 5, dtype=torch.bool)
    hole[0, 1, 2] = True
    rows = image[0, 0]
    expected = EDGE * (rows[0, 2] + rows[2, 2] + rows[1, 1] + rows[1, 3]) + CORNER * (
        rows[0, 1] + rows[0, 3] + rows[2, 1] + rows[2, 3]
    )
    filled = noisy_linear_imputation(image, hole, noise=0.0)
    torch.testing.assert_close(filled[0, 0, 1, 2], expected)


def test_imputation_noise_touches_only_removed_pixels(images, saliency):
    removed = removal_mask(saliency, 0.5, "morf")
    clean = noisy_linear_imputation(images, removed, noise=0.0)
    noisy = noisy_linear_imputation(
        images, removed, noise=0.05, generator=torch.Generator().manual_seed(3)
    )
    draws = torch.randn(images.shape, generator=torch.Generator().manual_seed(3))
    expected = torch.where(removed[:, None], clean + 0.05 * draws, images)
    torch.testing.assert_close(noisy, expected)


def test_imputation_rejects_a_fully_removed_image(images):
    with pytest.raises(ValueError, match="whole image"):
        noisy_linear_imputation(images, torch.ones(2, 7, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        noisy_linear_imputation(images, torch.ones(2, 9, 7, dtype=torch.bool))


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5, 0.9])
def test_removal_mask_takes_the_top_and_bottom_ranks(saliency, share):
    pixels = saliency[0].numel()
    count = pixels - int(np.ceil(round((pixels - 1) * (1 - share), 9)))
    for order, descending in (("morf", True), ("lerf", False)):
        mask = removal_mask(saliency, share, order)
        for b in range(saliency.shape[0]):
            ranked = saliency[b].flatten().argsort(descending=descending)[:count]
            expected = torch.zeros(pixels, dtype=torch.bool)
            expected[ranked] = True
            assert torch.equal(mask[b].flatten(), expected), (order, b)


def test_removal_mask_splits_ties_by_position():
    mostly_zero = torch.zeros(1, 4, 4)
    mostly_zero[0, 0, 0] = 1.0
    mask = removal_mask(mostly_zero, 0.5, "morf")
    # 8 of 16 removed: the peak, then the zeros that come last in row-major order
    expected = torch.zeros(16, dtype=torch.bool)
    expected[[0, *range(9, 16)]] = True
    assert torch.equal(mask.flatten(), expected)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2])
def test_removal_mask_rejects_a_bad_share(saliency, bad):
    with pytest.raises(ValueError, match="share"):
        removal_mask(saliency, bad, "morf")
    with pytest.raises(ValueError, match="order"):
        removal_mask(saliency, 0.5, "most")  # type: ignore[arg-type]


@pytest.mark.parametrize("softmax", [True, False])
def test_road_averages_confidence_changes(softmax):
    model = tiny_model(seed=2, num_classes=4)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([1, 3])
    clean = target_scores(model, x, targets, softmax=softmax)

    def changes(order: str) -> Tensor:
        rows = []
        for share in (0.2, 0.7):
            filled = torch.stack([
                torch.from_numpy(dense_imputation(x[b].double().numpy(), m.numpy())).float()
                for b, m in enumerate(removal_mask(maps, share, order))  # type: ignore[arg-type]
            ])  # fmt: skip
            rows.append(target_scores(model, filled, targets, softmax=softmax) - clean)
        return torch.stack(rows).mean(0)

    kw = {"removed": (0.2, 0.7), "noise": 0.0, "softmax": softmax}
    morf = road(model, x, maps, targets, order="morf", **kw)  # type: ignore[arg-type]
    lerf = road(model, x, maps, targets, order="lerf", **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(morf, changes("morf"), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lerf, changes("lerf"), atol=1e-5, rtol=1e-4)
    combined = road_combined(model, x, maps, targets, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(combined, (lerf - morf) / 2)


@pytest.mark.slow
@pytest.mark.parametrize("softmax", [False, True])
def test_road_matches_grad_cam(monkeypatch, softmax):
    road_peer = pytest.importorskip("pytorch_grad_cam.metrics.road")
    targets_peer = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    # the peer hard-codes noise 0.01 from the global RNG; compare the noise-free metric
    monkeypatch.setattr(
        road_peer.NoisyLinearImputer.__init__, "__defaults__", (0.0, road_peer.neighbors_weights)
    )
    model = tiny_model(seed=6, num_classes=5)
    x = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(7))
    maps = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(8))
    targets = torch.tensor([0, 4, 2])
    target_cls = (
        targets_peer.ClassifierOutputSoftmaxTarget
        if softmax
        else targets_peer.ClassifierOutputTarget
    )
    peer_targets = [target_cls(int(t)) for t in targets]
    cams = maps.numpy()
    kw = {"noise": 0.0, "softmax": softmax}
    for percentile in (10, 50, 80):
        share = (1 - percentile / 100,)
        theirs = road_peer.ROADMostRelevantFirst(percentile)(x, cams, peer_targets, model)
        ours = road(model, x, maps, targets, order="morf", removed=share, **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
        theirs = road_peer.ROADLeastRelevantFirst(percentile)(x, cams, peer_targets, model)
        ours = road(model, x, maps, targets, order="lerf", removed=share, **kw)  # type: ignore[arg-type]
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    theirs = road_peer.ROADCombined()(x, cams, peer_targets, model)
    ours = road_combined(model, x, maps, targets, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
