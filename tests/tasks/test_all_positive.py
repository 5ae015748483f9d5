"""``targets="all-positive"``: one map per positive label of a multi-label classifier.

Each row is compared with Grad-CAM (or Score-CAM) computed by our own hook on the single
image and the single logit it explains; the pairs with the logits computed here.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import InputError, ModelOutputError, TargetError
from camkit.targets import AllPositive
from camkit.testing import no_hooks_left

from . import reference

LAYER = "features"


class Tagger(nn.Module):
    """conv-relu features ``(B, 6, 6, 6)``, global pooling, 5 independent label logits."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU()]
        if norm:
            layers.insert(1, nn.BatchNorm2d(6))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(6, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


def _case(norm: bool = False) -> tuple[nn.Module, Tensor, Tensor]:
    """A tagger, 3 images and their logits: image 2 has no positive label (its logits are
    all -0.1), images 0 and 1 have different sets of several."""
    torch.manual_seed(0)
    model = Tagger(norm).eval()
    x = torch.randn(3, 3, 12, 12) * torch.tensor([4.0, 2.0, 0.1]).view(3, 1, 1, 1)
    with torch.no_grad():
        model.head.bias -= model(x)[2] + 0.1
        logits = model(x)
    positive = logits > 0
    assert not positive[2].any() and positive[:2].sum(1).max() >= 2 and positive.sum() >= 3
    return model, x, logits


@pytest.mark.parametrize("targets", ["all-positive", "All_Positive", AllPositive()])
def test_one_gradcam_map_per_positive_label(targets: str | AllPositive) -> None:
    model, x, logits = _case()
    images, labels = (logits > 0).nonzero(as_tuple=True)
    res = camkit.create("gradcam", model, LAYER)(x, targets=targets)
    assert res.images is not None
    assert res.images.tolist() == images.tolist() and res.targets.tolist() == labels.tolist()
    assert res.pairs == list(zip(images.tolist(), labels.tolist()))
    assert 2 not in res.images.tolist()  # no positive label: no row
    assert res.maps.shape == (len(images), 12, 12)
    torch.testing.assert_close(res.scores, logits[images])
    for row, (b, k) in enumerate(res.pairs):
        expected = reference.gradcam(model, LAYER, x[b : b + 1], lambda out, k=k: out[:, k])
        assert float(expected.amax()) > 0
        torch.testing.assert_close(res.layer_maps[LAYER][row : row + 1], expected)


def test_perturbation_methods_score_each_row_for_its_label() -> None:
    model, x, logits = _case()
    res = camkit.create("scorecam", model, LAYER)(x, targets="all-positive")
    assert len(res.pairs) == int((logits > 0).sum())
    for row, (b, k) in enumerate(res.pairs):
        expected = reference.scorecam(
            model, LAYER, x[b : b + 1], lambda out, _=None, k=k: out[:, k]
        )
        torch.testing.assert_close(
            res.layer_maps[LAYER][row : row + 1], expected, rtol=1e-4, atol=1e-6
        )


def test_the_threshold_is_on_the_logit_and_configurable() -> None:
    model, x, logits = _case()
    cut = float(logits[logits > 0].median())
    res = camkit.create("gradcam", model, LAYER)(x, targets=AllPositive(threshold=cut))
    expected = (logits > cut).nonzero().tolist()
    assert 0 < len(expected) < int((logits > 0).sum())
    assert [list(p) for p in res.pairs] == expected
    # On the probability: sigmoid(logit) > p.
    p = float(torch.sigmoid(torch.tensor(cut)))
    assert AllPositive.at_probability(p).threshold == pytest.approx(cut, abs=1e-6)
    assert AllPositive.at_probability(0.5).threshold == 0.0
    above = (torch.sigmoid(logits) > 0.52).nonzero()
    assert 0 < len(above) < int((logits > 0).sum())
    assert torch.stack(AllPositive.at_probability(0.52).pairs(logits), 1).tolist() == above.tolist()


def test_a_batch_without_positive_labels_gives_an_empty_result() -> None:
    model, x, _ = _case()
    res = camkit.create("gradcam", model, LAYER)(x[2:], targets="all-positive")
    assert res.maps.shape == (0, 12, 12) and res.pairs == []
    assert res.images is not None and res.images.shape == (0,)
    assert res.scores.shape == (0, 5) and res.targets.shape == (0,)
    assert res.layers == [LAYER] and res.layer_maps == {}


def test_other_targets_pair_each_row_with_its_image() -> None:
    model, x, _ = _case()
    res = camkit.create("gradcam", model, LAYER)(x, targets=[4, 1, 0])
    assert res.images is None and res.pairs == [(0, 4), (1, 1), (2, 0)]


def test_the_model_is_left_as_it_was() -> None:
    model, x, _ = _case(norm=True)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    camkit.create("gradcam", model, LAYER)(x, targets="all-positive")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    no_hooks_left(model)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        ("all-positives", "Did you mean 'all-positive'"),
        ("cat", "the string target is 'all-positive'"),
    ],
)
def test_unknown_strings_are_target_errors(targets: str, match: str) -> None:
    model, x, _ = _case()
    with pytest.raises(TargetError, match=match):
        camkit.create("gradcam", model, LAYER)(x, targets=targets)


@pytest.mark.parametrize("threshold", [math.nan, math.inf, "0.5", True, None])
def test_bad_thresholds_are_target_errors(threshold: object) -> None:
    with pytest.raises(TargetError, match="threshold must be a finite number"):
        AllPositive(threshold)  # type: ignore[arg-type]


@pytest.mark.parametrize("probability", [0, 1, 1.5, -0.1, math.nan, "0.5"])
def test_bad_probabilities_are_target_errors(probability: object) -> None:
    with pytest.raises(TargetError, match="probability in \\(0, 1\\)"):
        AllPositive.at_probability(probability)  # type: ignore[arg-type]


def test_outputs_that_are_not_logits_per_label_are_target_errors() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with pytest.raises(TargetError, match=r"needs \(B, num_labels\) logits.*\(2, 2, 8, 8\)"):
        camkit.create("gradcam", dense, "1")(torch.rand(2, 3, 8, 8), targets="all-positive")


def test_an_expanding_target_outside_a_call_is_a_target_error() -> None:
    from camkit.engine.targeting import resolve_targets

    with pytest.raises(TargetError, match="or 'all-positive', not AllPositive"):
        resolve_targets(AllPositive(), torch.zeros(2, 3))  # type: ignore[arg-type]


def test_non_finite_inputs_and_logits_are_named() -> None:
    model, x, _ = _case()
    cam = camkit.create("gradcam", model, LAYER)
    bad = x.clone()
    bad[1, 0, 0, 0] = math.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        cam(bad, targets="all-positive")
    with torch.no_grad():
        model.head.bias[3] = math.inf
    with pytest.raises(ModelOutputError, match="logits of image 0 are not finite"):
        cam(x, targets="all-positive")
