"""Deletion and insertion curves and AUCs on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from camkit.metrics import auc, deletion, gaussian_blur, insertion, perturbation_curve

IMAGE = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])[None]
# saliency order: (0, 1) 0.9 > (1, 0) 0.5 > (1, 1) 0.2 > (0, 0) 0.1, i.e. values 2, 3, 4, 1
SALIENCY = torch.tensor([[[0.1, 0.9], [0.5, 0.2]]])
TARGET = torch.tensor([0])


def _pixel_sum(x: torch.Tensor) -> torch.Tensor:
    s = x.sum((1, 2, 3))
    return torch.stack([s, torch.zeros_like(s)], dim=1)


def _curve(mode, step, substrate="zeros", softmax=False):
    return perturbation_curve(
        _pixel_sum, IMAGE, SALIENCY, TARGET, mode=mode, step=step, substrate=substrate,
        softmax=softmax,
    )  # fmt: skip


def test_deletion_removes_the_most_salient_pixels_first():
    assert _curve("deletion", 1).tolist() == [[10.0, 8.0, 5.0, 1.0, 0.0]]
    auc_value = deletion(_pixel_sum, IMAGE, SALIENCY, TARGET, step=1, softmax=False)
    assert auc_value.tolist() == pytest.approx([(24 - (10 + 0) / 2) / 4])


def test_insertion_adds_the_most_salient_pixels_first():
    assert _curve("insertion", 1).tolist() == [[0.0, 2.0, 5.0, 9.0, 10.0]]
    auc_value = insertion(
        _pixel_sum, IMAGE, SALIENCY, TARGET, step=1, substrate="zeros", softmax=False
    )
    assert auc_value.tolist() == pytest.approx([(26 - 10 / 2) / 4])


def test_a_step_larger_than_one_and_a_short_last_step():
    # 4 pixels in steps of 3: after one step 2 + 3 + 4 are gone, after two all of them
    assert _curve("deletion", 3).tolist() == [[10.0, 1.0, 0.0]]
    assert auc(torch.tensor([[10.0, 1.0, 0.0]])).tolist() == [pytest.approx(3.0)]


def test_a_given_substrate_replaces_deleted_pixels():
    fill = torch.full_like(IMAGE, 10.0)
    assert _curve("deletion", 2, substrate=fill).tolist() == [[10.0, 25.0, 40.0]]


def test_softmax_turns_scores_into_probabilities():
    curve = _curve("deletion", 2, softmax=True)
    sigmoid = [1 / (1 + math.exp(-s)) for s in (10.0, 5.0, 0.0)]
    assert curve.tolist() == [pytest.approx(sigmoid)]


def test_ties_in_saliency_are_broken_by_position():
    flat = torch.zeros(1, 2, 2)
    curve = perturbation_curve(
        _pixel_sum, IMAGE, flat, TARGET, mode="deletion", step=1, substrate="zeros",
        softmax=False,
    )  # fmt: skip
    assert curve.tolist() == [[10.0, 9.0, 7.0, 4.0, 0.0]]


def test_gaussian_blur_of_a_point_is_the_normalized_kernel():
    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 10] = 1.0
    sigma, size = 2.0, 11
    g = [math.exp(-((i - 5) ** 2) / (2 * sigma**2)) for i in range(size)]
    total = sum(g)
    blurred = gaussian_blur(image, sigma=sigma, kernel_size=size)[0, 0]
    for dy, dx in [(0, 0), (1, 0), (2, 3), (-5, 4)]:
        expected = g[5 + dy] * g[5 + dx] / total**2
        assert blurred[10 + dy, 10 + dx].item() == pytest.approx(expected, rel=1e-5)
    assert blurred[10, 16].item() == 0.0  # outside the kernel's reach


def test_gaussian_blur_keeps_a_constant_image_constant():
    image = torch.full((2, 3, 5, 7), 0.3)
    assert torch.allclose(gaussian_blur(image), image, atol=1e-6)


def test_curves_do_not_depend_on_how_images_share_forward_passes():
    images = torch.cat([IMAGE, IMAGE.flip(-1) * 2])
    saliency = torch.cat([SALIENCY, SALIENCY.flip(-2)])
    targets = torch.tensor([0, 0])
    curves = [
        perturbation_curve(
            _pixel_sum,
            images,
            saliency,
            targets,
            mode="insertion",
            step=1,
            substrate="zeros",
            softmax=False,
            batch_size=size,
        )
        for size in (3, 5, 10, 128)
    ]
    # image 2: values [[4, 2], [8, 6]] with saliency [[0.5, 0.2], [0.1, 0.9]]: 6, 4, 2, 8
    assert curves[0].tolist() == [[0.0, 2.0, 5.0, 9.0, 10.0], [0.0, 6.0, 10.0, 12.0, 20.0]]
    for other in curves[1:]:
        assert torch.equal(other, curves[0])
