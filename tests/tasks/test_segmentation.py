"""Segmentation: explaining a class inside a mask, at a clicked pixel, or over the whole
predicted region, on torchvision's segmenters (dict outputs ``out`` and ``aux``).

References compute the score from ``model(x)["out"]`` directly, with their own hook.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import segmentation

import camkit
from camkit.errors import TargetError
from camkit.targets import SegmentationTarget

from . import reference

CLASS = 1


def _segmenter(name: str) -> nn.Module:
    torch.manual_seed(0)
    options = {"weights": None, "weights_backbone": None, "num_classes": 3}
    if not name.startswith("lraspp"):
        options["aux_loss"] = True  # the output dict then holds "aux" beside "out"
    return getattr(segmentation, name)(**options).eval()


def _inputs() -> Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 64, 64)


def _box_mask() -> Tensor:
    mask = torch.zeros(2, 64, 64)
    mask[0, 8:30, 10:40] = 1
    mask[1, 30:60, 4:20] = 1
    return mask


KINDS = {
    # kind: (camkit target from the clean output and a class, reference score of "out")
    "mask": (
        lambda out, c: SegmentationTarget(c, _box_mask()),
        lambda out, c, m: (out[:, c] * m).sum((1, 2)),
    ),
    "pixel": (
        lambda out, c: SegmentationTarget(c, pixel=(20, 33)),
        lambda out, c, m: out[:, c, 20, 33],
    ),
    "predicted": (
        lambda out, c: SegmentationTarget.predicted(out, c),
        lambda out, c, m: (out[:, c] * m).sum((1, 2)),
    ),
}


def _reference_mask(kind: str, clean: Tensor, c: int) -> Tensor:
    if kind == "predicted":
        return (clean.argmax(1) == c).float()
    return _box_mask()


def test_pixel_and_predicted_targets() -> None:
    scores = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 2, 3)
    index = torch.tensor([1, 0])
    pixel = SegmentationTarget(1, pixel=(1, 2))
    assert torch.equal(pixel(scores, index), torch.tensor([11.0, 23.0]))
    scores[0, 0, 0, 0] = 100.0  # image 0 predicts class 0 at (0, 0), class 1 elsewhere
    predicted = SegmentationTarget.predicted(scores, 1)
    assert predicted.mask is not None and int(predicted.mask.sum()) == 11
    # rows in another order are still scored on their own image's predicted region
    got = predicted(scores[[1, 0]], torch.tensor([1, 0]))
    assert torch.equal(got, torch.tensor([scores[1, 1].sum(), scores[0, 1].sum() - 6.0]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SegmentationTarget(0), "a mask or a pixel"),
        (lambda: SegmentationTarget(0, torch.ones(2, 2), pixel=(0, 0)), "not both"),
        (lambda: SegmentationTarget(0, pixel=(1,)), r"pixel must be \(row, col\)"),
        (lambda: SegmentationTarget(0, pixel=(-1, 2)), r"pixel must be \(row, col\)"),
        (lambda: SegmentationTarget.predicted(torch.zeros(2, 3), 0), "needs the clean"),
    ],
)
def test_bad_segmentation_targets_raise(make: object, match: str) -> None:
    with pytest.raises(TargetError, match=match):
        make()  # type: ignore[operator]


def test_pixel_outside_the_output_raises() -> None:
    with pytest.raises(TargetError, match=r"pixel \(4, 0\) is outside the model's \(4, 4\)"):
        SegmentationTarget(0, pixel=(4, 0))(torch.zeros(1, 2, 4, 4), torch.arange(1))


def _check_gradcam(name: str, layer: str, kind: str) -> None:
    model, x = _segmenter(name), _inputs()
    with torch.no_grad():
        clean = model(x)["out"]
    # The class predicted most often: a random model's predicted region of another may be empty.
    c = int(clean.argmax(1).flatten().mode().values)
    make, score = KINDS[kind]
    mask = _reference_mask(kind, clean, c)
    expected = reference.gradcam(model, layer, x, lambda out: score(out["out"], c, mask))
    res = camkit.create("gradcam", model, layer)(x, targets=make(clean, c))
    scale = expected.amax()
    assert float(scale) > 0
    # 1e-4 of the map's peak: ResNet-50's float32 sums round differently in camkit's
    # channels-last forward than in the reference's on some CPUs (AVX2-only kernels).
    torch.testing.assert_close(
        res.layer_maps[layer] / scale, expected / scale, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(res.scores, clean, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    ("name", "layer"),
    [("lraspp_mobilenet_v3_large", "backbone.16"), ("deeplabv3_mobilenet_v3_large", "backbone.16")],
)
def test_gradcam_explains_segmentation_targets(name: str, layer: str, kind: str) -> None:
    _check_gradcam(name, layer, kind)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50"])
def test_gradcam_explains_resnet_segmenters(name: str, kind: str) -> None:
    _check_gradcam(name, "backbone.layer4", kind)


def test_scorecam_scores_the_pixel_of_each_image() -> None:
    # 16 channels, both images' masked copies mixed in chunks of 5.
    model, x, layer = _segmenter("deeplabv3_mobilenet_v3_large"), _inputs(), "backbone.1"
    expected = reference.scorecam(model, layer, x, lambda out, _=None: out["out"][:, CLASS, 20, 33])
    res = camkit.create("scorecam", model, layer, batch_size=5)(
        x, targets=SegmentationTarget(CLASS, pixel=(20, 33))
    )
    scale = expected.flatten(1).amax(1)[:, None, None]
    assert bool((scale > 0).all())
    torch.testing.assert_close(
        res.layer_maps[layer] / scale, expected / scale, rtol=1e-4, atol=1e-5
    )
