"""The ``targets`` argument: every accepted form, and every way to get it wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

import camkit
from camkit.engine.targeting import resolve_targets
from camkit.errors import TargetError

# Rows are images, columns classes; the predicted classes are 2 and 0.
SCORES = torch.tensor([[0.1, 0.5, 0.9, -1.0], [3.0, 2.0, 1.0, 0.0]])
ROWS = torch.arange(2)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        (None, [2, 0]),
        (3, [3, 3]),
        ([1, 3], [1, 3]),
        ([2, 2], [2, 2]),
        ((0, 0), [0, 0]),
        ((0, 2), [0, 2]),
        (torch.tensor([3, 1]), [3, 1]),
        (torch.tensor([3, 1], dtype=torch.int32), [3, 1]),
        (torch.tensor(2), [2, 2]),
        (np.int64(1), [1, 1]),
        (np.array([2, 3]), [2, 3]),
        ([np.int32(0), 1], [0, 1]),
    ],
)
def test_index_forms(targets, expected):
    resolved = resolve_targets(targets, SCORES)
    assert resolved.indices.dtype == torch.long
    assert resolved.indices.tolist() == expected
    want = torch.tensor([float(SCORES[i, t]) for i, t in enumerate(expected)])
    torch.testing.assert_close(resolved.score(SCORES, ROWS), want)


def test_score_rows_of_perturbed_copies():
    # Rows 2 and 3 are copies of images 1 and 0: each is scored for its own image's target.
    rows = torch.cat([SCORES, SCORES.flip(0)])
    resolved = resolve_targets([1, 3], SCORES)
    got = resolved.score(rows, torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(got, torch.tensor([0.5, 0.0, 0.0, 0.5]))


@pytest.mark.parametrize("targets", [1, [1, 1], torch.tensor([1, 1])])
def test_one_class_for_every_row(targets):
    # Every form of "class 1 for every image" scores rows alike, copies included, and the
    # score stays on the autograd graph.
    resolved = resolve_targets(targets, SCORES)
    rows = torch.cat([SCORES, SCORES.flip(0)]).requires_grad_(True)
    got = resolved.score(rows, torch.tensor([0, 1, 1, 0]))
    torch.testing.assert_close(got.detach(), torch.tensor([0.5, 2.0, 2.0, 0.5]))
    (grad,) = torch.autograd.grad(got.sum(), rows)
    assert grad[:, 1].tolist() == [1.0] * 4 and float(grad.abs().sum()) == 4.0


def test_callable_with_one_argument():
    resolved = resolve_targets(lambda s: s[:, 1] - s[:, 0], SCORES)
    assert resolved.indices.tolist() == [-1, -1]
    torch.testing.assert_close(resolved.score(SCORES, ROWS), torch.tensor([0.4, -1.0]))


def test_callable_with_index():
    wanted = torch.tensor([3, 2])

    def fn(scores: Tensor, index: Tensor) -> Tensor:
        return scores[torch.arange(len(index)), wanted[index]]

    resolved = resolve_targets(fn, SCORES)
    torch.testing.assert_close(resolved.score(SCORES, ROWS), torch.tensor([-1.0, 1.0]))
    torch.testing.assert_close(
        resolved.score(SCORES.flip(0), torch.tensor([1, 0])), torch.tensor([1.0, -1.0])
    )


def test_callable_returning_the_wrong_shape():
    resolved = resolve_targets(lambda s: s.sum(), SCORES)
    with pytest.raises(TargetError, match=r"one score per row, shape \(2,\); it returned \(\)"):
        resolved.score(SCORES, ROWS)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (4, r"target class 4 is out of range.*4 classes.*\[0, 3\]"),
        ([0, -1], r"target class -1 is out of range.*\[0, 3\]"),
        (2**70, r"target class 1180591620717411303424 is out of range"),
        ((5, 5), r"target class 5 is out of range"),
        (torch.tensor([9, 0]), r"target class 9"),
        ([0, 1, 2], r"got 3 targets for a batch of 2"),
        (torch.tensor([1]), r"got 1 targets for a batch of 2"),
        (torch.tensor([1.0, 2.0]), r"1-D integer class indices, got torch.float32"),
        (torch.tensor([[1, 2]]), r"1-D integer class indices.*shape \(1, 2\)"),
        (True, r"not a bool"),
        ([True, False], r"class indices \(ints\)"),
        ([1.0, 2.0], r"class indices \(ints\)"),
        ("cat", r"unknown targets 'cat': the string target is 'all-positive'"),
        (1.5, r"not float"),
    ],
)
def test_bad_targets(targets, match):
    with pytest.raises(TargetError, match=match) as info:
        resolve_targets(targets, SCORES)
    assert isinstance(info.value, ValueError)


def test_index_targets_need_class_scores():
    with pytest.raises(TargetError, match="Pass a callable target"):
        resolve_targets(0, torch.zeros(2, 3, 4))


def test_callable_targets_through_gradcam(tiny, x32, ref):
    """A score difference and a per-image choice, against the reference's gradients."""

    def margin(s: Tensor) -> Tensor:
        return s[:, 1] - s[:, 2]

    _, expected = ref.gradcam(tiny, tiny.features, x32, margin)
    res = camkit.create("gradcam", tiny, "features")(x32, targets=margin)
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)
    assert res.targets.tolist() == [-1, -1]

    wanted = torch.tensor([4, 0])
    _, expected = ref.gradcam(tiny, tiny.features, x32, ref.pick([4, 0]))
    res = camkit.create("gradcam", tiny, "features")(
        x32, targets=lambda s, index: s[torch.arange(len(index)), wanted[index]]
    )
    torch.testing.assert_close(res.maps, expected, atol=1e-5, rtol=0)


def test_bad_target_through_the_extractor(tiny, x32, no_hooks):
    with pytest.raises(TargetError, match=r"\[0, 4\]"):
        camkit.create("gradcam", tiny, "features")(x32, targets=5)
    with pytest.raises(TargetError, match=r"\[0, 4\]"):
        camkit.create("cam", tiny, "features")(x32, targets=[0, 5])
    no_hooks(tiny)
