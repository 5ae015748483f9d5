"""Detection: explaining one box of a torchvision detector.

The detector returns a list of dicts; camkit packs it into ``(B, M, 6)`` rows and
:class:`~camkit.targets.DetectionTarget` scores the best class-score x IoU match with a
reference box. Maps are checked against naive re-implementations that compute the target
from the list of dicts box by box (``reference.py``), for gradient, Score-CAM and
Ablation-CAM methods, whose perturbed forwards return other boxes in another order.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.outputs import detections_tensor, scores_of
from camkit.errors import GradientError, LayerError, TargetError
from camkit.targets import DetectionTarget

from . import reference
from .models import TINY_DETECTORS, stock_detector

LAYER = "backbone.body"


def _case(name: str, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor, list[int]]:
    """A tiny detector, two images, and each image's top clean detection as the reference."""
    model = TINY_DETECTORS[name](seed)
    torch.manual_seed(seed + 1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    boxes, labels = zip(*(_top_box(d) for d in out))
    return model, x, torch.stack(boxes), list(labels)


def _top_box(det: dict[str, Tensor]) -> tuple[Tensor, int]:
    # Random regression heads also return boxes of zero width, whose IoU is 0 / 0.
    sides = det["boxes"][:, 2:] - det["boxes"][:, :2]
    j = int((sides.amin(1) > 1).nonzero()[0, 0])
    return det["boxes"][j], int(det["labels"][j])


# -- the target and the packing ---------------------------------------------------------------


def test_detections_are_packed_with_padding_and_gradients() -> None:
    scores = torch.tensor([0.9, 0.4], requires_grad=True)
    out = [
        {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), "scores": scores,
         "labels": torch.tensor([2, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0).long()},
    ]  # fmt: skip
    packed = scores_of(out)
    expected = torch.tensor(
        [[[0.0, 0, 4, 4, 0.9, 2], [1, 1, 5, 5, 0.4, 1]], [[0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, -1]]]
    )
    torch.testing.assert_close(packed, expected)
    (grad,) = torch.autograd.grad(packed[:, :, 4].sum(), scores)
    assert torch.equal(grad, torch.ones(2))
    assert scores_of(out[1:]).shape == (1, 0, 6)
    unlabelled = detections_tensor([{"boxes": torch.ones(1, 4), "scores": torch.ones(1)}])
    assert float(unlabelled[0, 0, 5]) == 0.0


def test_detection_target_takes_the_best_match_of_the_class() -> None:
    ref = torch.tensor([0.0, 0, 4, 4])
    rows = torch.tensor(
        [
            [[0.0, 0, 4, 2, 0.8, 1], [0, 0, 4, 4, 0.3, 1], [0, 0, 4, 4, 0.99, 2]],
            # the same boxes in another order, and a pad row
            [[0, 0, 4, 4, 0.99, 2], [0, 0, 4, 2, 0.8, 1], [0, 0, 0, 0, 0, -1]],
            # no box of class 1 overlaps; class 1 absent entirely
            [[8, 8, 9, 9, 0.9, 1], [0, 0, 4, 4, 0.5, 3], [0, 0, 0, 0, 0, -1]],
            [[0, 0, 4, 4, 0.5, 3], [0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, -1]],
        ]
    )
    got = DetectionTarget(ref, 1)(rows, torch.zeros(4, dtype=torch.long))
    # 0.8 * IoU 0.5 beats 0.3 * IoU 1; class 2's perfect box does not count.
    torch.testing.assert_close(got, torch.tensor([0.4, 0.4, 0.0, 0.0]))
    per_image = DetectionTarget(torch.stack([ref, torch.tensor([8.0, 8, 9, 9])]), [2, 1])
    torch.testing.assert_close(
        per_image(rows[[0, 2]], torch.tensor([0, 1])), torch.tensor([0.99, 0.9])
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DetectionTarget([0, 0, 4], 1), r"box must be \(x1, y1, x2, y2\)"),
        (lambda: DetectionTarget([0.0, 0, 4, 4], 1.5), "an int or a 1-D sequence"),
    ],
)
def test_bad_detection_targets_raise(make: object, match: str) -> None:
    with pytest.raises(TargetError, match=match):
        make()  # type: ignore[operator]


def test_detection_target_needs_a_detector() -> None:
    with pytest.raises(TargetError, match="needs a detector's output"):
        DetectionTarget([0.0, 0, 4, 4], 1)(torch.zeros(2, 5), torch.arange(2))


def test_class_index_targets_on_a_detector_raise() -> None:
    model, x, _, _ = _case("faster-rcnn")
    with pytest.raises(TargetError, match="Pass a callable target"):
        camkit.create("gradcam", model, LAYER)(x)


# -- maps against the references --------------------------------------------------------------

REFERENCES = {
    "gradcam": reference.gradcam,
    "scorecam": reference.scorecam,
    "ablationcam": reference.ablationcam,
}


@pytest.mark.parametrize("method", list(REFERENCES))
@pytest.mark.parametrize("detector", list(TINY_DETECTORS))
def test_box_maps_match_the_reference(detector: str, method: str) -> None:
    model, x, boxes, labels = _case(detector)
    expected = REFERENCES[method](model, LAYER, x, reference.detection_score(boxes, labels))
    # Laid out and batched as the reference runs them: a detector's boxes (top-k,
    # thresholds, NMS) jump with float rounding, and CPU kernels round differently for other
    # layouts and batch sizes (AVX2-only CPUs), so those runs are not comparable to the bit.
    options = {"channels_last": False} | ({} if method == "gradcam" else {"batch_size": 1})
    res = camkit.create(method, model, LAYER, **options)(x, DetectionTarget(boxes, labels))
    got = res.layer_maps[LAYER]
    assert float(expected.amax()) > 0
    scale = expected.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(got / scale, expected / scale, rtol=1e-4, atol=1e-5)
    assert res.scores.shape[::2] == (2, 6)


def test_perturbed_forwards_change_the_boxes() -> None:
    # What makes the matching necessary: a masked image yields other boxes, other order.
    model, x, boxes, labels = _case("faster-rcnn")
    with torch.no_grad():
        clean, masked = model(x[:1])[0], model(x[:1] * 0.3)[0]
    assert not torch.equal(clean["boxes"], masked["boxes"])
    target = DetectionTarget(boxes[:1], labels[:1])
    score = target(scores_of([masked]), torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(score[0], reference.box_score(masked, boxes[0], labels[0]))


@pytest.mark.parametrize("method", camkit.list_methods())
def test_every_method_explains_a_box_or_says_why_not(method: str) -> None:
    model, x, boxes, labels = _case("faster-rcnn")
    fields = camkit.method_info(method).config.model_fields
    config = {k: v for k, v in {"num_samples": 2, "seed": 0}.items() if k in fields}
    cam = camkit.create(method, model, LAYER, **config)
    try:
        res = cam(x, targets=DetectionTarget(boxes, labels))
    except TargetError as exc:
        # CAM reads a classifier's rows for a class index, Finer-CAM contrasts a classifier's
        # classes; a detector has none.
        assert method in ("cam", "finercam") and "class-index" in str(exc)
        return
    except LayerError as exc:  # a ViT-only method refuses a CNN backbone
        assert camkit.method_info(method).cls.needs_attention and "attention" in str(exc)
        return
    except GradientError as exc:  # torchvision's roi_align has no second derivative
        assert method == "shapleycam" and "second derivative" in str(exc)
        return
    assert res.maps.shape == (2, 64, 64)
    assert bool(torch.isfinite(res.maps).all()) and res.maps.min() >= 0 and res.maps.max() <= 1


# -- stock torchvision detectors ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "fasterrcnn_resnet50_fpn",
        "maskrcnn_resnet50_fpn",
        "retinanet_resnet50_fpn",
        "fcos_resnet50_fpn",
    ],
)
def test_stock_detectors_match_the_reference(name: str) -> None:
    model = stock_detector(name)
    layer = camkit.tasks.detector_layer(model)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        det = model(x)[0]
    # The first well-formed box whose (ReLU'd) Grad-CAM is not empty, so the test can fail.
    for j in range(len(det["scores"])):
        boxes, labels = det["boxes"][j : j + 1], [int(det["labels"][j])]
        if float((boxes[0, 2:] - boxes[0, :2]).amin()) <= 1:
            continue
        expected = reference.gradcam(model, layer, x, reference.detection_score(boxes, labels))
        if float(expected.amax()) > 0:
            break
    res = camkit.create("gradcam", model, layer)(x, DetectionTarget(boxes, labels))
    scale = float(expected.amax())
    assert scale > 0
    torch.testing.assert_close(
        res.layer_maps[layer] / scale, expected / scale, rtol=1e-4, atol=1e-5
    )
    # Eigen-CAM ignores the target, but a detector's output still needs a callable one.
    eigen = camkit.create("eigencam", model, layer)(x, DetectionTarget(boxes, labels))
    assert eigen.maps.shape == (1, 64, 64) and float(eigen.maps.amax()) == 1.0


@pytest.mark.slow
def test_ssdlite_runs_at_the_suggested_layer() -> None:
    # With random weights SSDlite's activations vanish (|A| < 1e-15 at 64 px), so its maps
    # cannot be compared meaningfully; check that the layer choice and the packing work.
    model = stock_detector("ssdlite")
    layer = camkit.tasks.detector_layer(model)
    assert layer == "backbone.features.1"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        det = model(x)[0]
    target = DetectionTarget(det["boxes"][0], int(det["labels"][0]))
    res = camkit.create("gradcam", model, layer)(x, target)
    assert res.layer_maps[layer].shape == (1, 10, 10) and bool(torch.isfinite(res.maps).all())


def test_a_layer_returning_a_dict_of_levels_is_refused() -> None:
    # RetinaNet's backbone returns {level: map}, like torchvision's feature pyramids.
    model, x, boxes, labels = _case("retinanet")
    with pytest.raises(LayerError, match="not a tensor"):
        camkit.create("gradcam", model, "backbone")(x, DetectionTarget(boxes, labels))


def test_detector_layer_needs_a_torchvision_layout() -> None:
    assert camkit.tasks.detector_layer(TINY_DETECTORS["faster-rcnn"]()) == "backbone.body.3"
    with pytest.raises(LayerError, match="name the layer"):
        camkit.tasks.detector_layer(nn.Conv2d(3, 3, 1))


def test_the_detector_is_left_as_it_was() -> None:
    model, x, boxes, labels = _case("faster-rcnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    camkit.create("gradcam", model, LAYER)(x, DetectionTarget(boxes, labels))
    assert not model.training
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_pyramid_levels_are_explained_each_and_fused() -> None:
    model = stock_detector("fasterrcnn_resnet50_fpn")
    torch.manual_seed(1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        box, label = _top_box(model(x)[0])
    layers = ["backbone.fpn.layer_blocks.0", "backbone.body.layer4", "backbone.fpn.layer_blocks.3"]
    res = camkit.create("gradcam", model, layers)(x, DetectionTarget(box, label))
    score = reference.detection_score(box[None], [label])
    for layer in layers[:2]:
        expected = reference.gradcam(model, layer, x, score)
        scale = float(expected.amax())
        assert scale > 0
        torch.testing.assert_close(
            res.layer_maps[layer] / scale, expected / scale, rtol=1e-4, atol=1e-5
        )
    # The RoI heads pool this small box from the finest level only: the coarsest gets no
    # gradient at all, which is why detector_layer picks the body, which feeds every level.
    assert res.layer_maps["backbone.fpn.layer_blocks.3"].shape == (1, 2, 2)
    assert not bool(res.layer_maps["backbone.fpn.layer_blocks.3"].any())
