"""Multi-label (one map per positive label), binary (one logit) and regression outputs.

Each map is compared with Grad-CAM computed by our own hook on the single image and the
single output value explained.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import TargetError
from camkit.targets import OutputTarget
from camkit.tasks import positive_labels

from . import reference

LAYER = "features"


class Net(nn.Module):
    """conv-relu features ``(B, 6, 6, 6)``, global pooling, ``outputs`` linear outputs;
    ``flat`` squeezes a single output to ``(B,)`` as regression models often do."""

    def __init__(self, outputs: int, flat: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(6, outputs)
        self.flat = flat

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.features(x).mean((2, 3)))
        return out.squeeze(1) if self.flat else out


def _case(outputs: int, flat: bool = False) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    model = Net(outputs, flat).eval()
    return model, torch.randn(3, 3, 12, 12)


def test_positive_labels_expand_the_batch() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, -1.0, -1.0], [0.1, 1.0, 0.0]])
    images, labels = positive_labels(logits)
    assert images.tolist() == [0, 0, 2, 2] and labels.tolist() == [0, 2, 0, 1]
    images, labels = positive_labels(logits, threshold=0.7)
    assert images.tolist() == [0, 2] and labels.tolist() == [0, 1]
    with pytest.raises(TargetError, match="needs \\(B, num_labels\\) logits"):
        positive_labels(torch.zeros(2, 3, 4))


def test_one_map_per_positive_label() -> None:
    model, x = _case(5)
    with torch.no_grad():
        logits = model(x)
    images, labels = positive_labels(logits)
    assert len(images) > x.shape[0]  # some image has several positive labels
    res = camkit.create("gradcam", model, LAYER)(x[images], targets=labels)
    for row, (b, k) in enumerate(zip(images.tolist(), labels.tolist())):
        expected = reference.gradcam(model, LAYER, x[b : b + 1], lambda out, k=k: out[:, k])
        torch.testing.assert_close(res.layer_maps[LAYER][row : row + 1], expected)
    assert torch.equal(res.targets, labels)


def test_explaining_the_probability_gives_the_logits_map() -> None:
    # sigmoid is monotonic: its gradient only rescales each row's Grad-CAM weights.
    model, x = _case(5)
    cam = camkit.create("gradcam", model, LAYER)
    by_logit = cam(x, targets=[1, 1, 1])
    by_probability = cam(x, targets=lambda s: torch.sigmoid(s[:, 1]))
    torch.testing.assert_close(by_probability.maps, by_logit.maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("negate", [False, True])
def test_binary_classifier(negate: bool) -> None:
    model, x = _case(1)
    sign = -1.0 if negate else 1.0
    expected = reference.gradcam(model, LAYER, x, lambda out: sign * out[:, 0])
    cam = camkit.create("gradcam", model, LAYER)
    res = cam(x, targets=OutputTarget(negate=negate))
    torch.testing.assert_close(res.layer_maps[LAYER], expected)
    assert float(expected.amax()) > 0
    if not negate:  # the default target of a one-logit model is that logit
        torch.testing.assert_close(cam(x).layer_maps[LAYER], expected)


@pytest.mark.parametrize(("outputs", "flat", "index"), [(1, True, 0), (4, False, 2)])
@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_regression_outputs(method: str, outputs: int, flat: bool, index: int) -> None:
    model, x = _case(outputs, flat)
    value = (lambda out: out) if flat else (lambda out: out[:, index])
    refs = {"gradcam": reference.gradcam, "scorecam": reference.scorecam}
    expected = refs[method](model, LAYER, x, lambda out, _=None: value(out))
    res = camkit.create(method, model, LAYER)(x, targets=OutputTarget(index))
    torch.testing.assert_close(res.layer_maps[LAYER], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 0


def test_output_target_checks_its_index() -> None:
    with pytest.raises(TargetError, match="D > 4"):
        OutputTarget(4)(torch.zeros(2, 3), torch.arange(2))
    with pytest.raises(TargetError, match="int >= 0"):
        OutputTarget(-1)
