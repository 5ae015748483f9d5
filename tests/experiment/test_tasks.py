"""``[task]`` in experiment files: the schema, ground truth, targets, metrics and the report.

Targets and metrics are checked against direct re-computations written here: the score of
each target by a loop over the model's raw output, deletion and insertion curves by
replacing pixels one step at a time, pointing game and energy from the map and the region.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.errors import ConfigError, DataError, TargetError
from camkit.experiment import load_config, run, validate
from camkit.experiment.config import MetricsSpec, TaskSpec
from camkit.experiment.data import Batch, open_source
from camkit.experiment.task import MatchedBox, RegionTarget, Task, outline
from camkit.metrics import (
    box_masks,
    energy_pointing_game,
    mask_energy,
    mask_pointing_game,
    pointing_game,
)
from camkit.targets import DetectionTarget
from camkit.zoo import shapes

ROOT = Path(__file__).resolve().parents[2]
MODELS = Path(__file__).resolve().parent / "task_models.py"


def _models():
    import importlib.util

    spec = importlib.util.spec_from_file_location("camkit_test_task_models", MODELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_tiny = _models()
TinyDetector, TinyEmbedder, TinySegmenter = (
    _tiny.TinyDetector,
    _tiny.TinyEmbedder,
    _tiny.TinySegmenter,
)
EXAMPLES = ["detection", "segmentation", "multilabel", "embedding"]
METHODS = [{"name": "gradcam", "layer": "features"}]


# ---------------------------------------------------------------- schema


def test_default_task_is_classification_and_fingerprints_are_unchanged():
    # the fingerprints of the examples before [task] existed: their runs still resume
    before = {
        "quickstart": "3a45d74bfb6e93e3",
        "sanity": "6702d67de37dff48",
        "imagenet-folder": "48eefb28054eb082",
    }
    for name, fingerprint in before.items():
        config = load_config(ROOT / "examples" / f"{name}.toml")
        assert config.task.kind == "classification"
        assert config.fingerprint() == fingerprint
        assert "task" not in config.comparable()
        explicit = load_config(ROOT / "examples" / f"{name}.toml", ["task.kind=classification"])
        assert explicit.fingerprint() == fingerprint
    detection = load_config(ROOT / "examples" / "quickstart.toml", ["task.kind=multilabel"])
    assert detection.fingerprint() != before["quickstart"]


def test_each_kind_fills_in_its_own_defaults_only():
    assert TaskSpec(kind="detection").model_dump() == {
        "kind": "detection", "box": "top", "iou": 0.5, "region": None, "reference": None,
    }  # fmt: skip
    assert TaskSpec(kind="segmentation").region == "ground-truth"
    assert TaskSpec(kind="embedding").reference == "self"
    assert TaskSpec(kind="embedding", reference=["a.png"]).reference == ["a.png"]
    assert TaskSpec().model_dump() == {
        "kind": "classification", "box": None, "iou": None, "region": None, "reference": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("task", "extra", "message"),
    [
        ({"kind": "segmentation", "box": "top"}, {}, "task.box is a detection key"),
        ({"kind": "detection", "region": "predicted"}, {}, "task.region is a segmentation key"),
        ({"kind": "classification", "reference": "self"}, {}, "task.reference is an? ?embedding"),
        ({"kind": "detect"}, {}, "task.kind: Input should be 'classification'"),
        ({"kind": "detection", "iou": 1.5}, {}, "task.iou: Input should be less than or equal"),
        ({"kind": "detection", "iou": "0.5"}, {}, "task.iou: Input should be a valid number"),
        ({"kind": "detection", "boxes": "top"}, {}, "task.boxes: unknown key; expected one of"),
        ({"kind": "embedding", "reference": []}, {}, "at least one image"),
        ({"kind": "embedding", "reference": "others"}, {}, "task.reference"),
        ({"kind": "detection"}, {"targets": 1}, "targets: task.kind 'detection' chooses"),
        ({"kind": "embedding"}, {"targets": "label"}, "expected no 'targets' key"),
        ({"kind": "segmentation"}, {"metrics": {"compute": ["arcc"]}}, "classification only"),
        ({"kind": "detection"}, {"data": {"annotations": "a.json"}}, "ground-truth boxes|files"),
        ({}, {"data": {"annotations": "a.json"}}, "data.annotations: ground-truth boxes are read"),
        ({"kind": "segmentation"}, {"data": {"annotations": "a.json"}}, "not 'segmentation'"),
        ({"kind": "detection"}, {"data": {"source": "x.png"}}, "needs a COCO-style JSON"),
        ({"kind": "multilabel"}, {"targets": "label", "data": {"source": "x.png"}}, "'label'"),
    ],
)
def test_strict_task_errors(task, extra, message):
    with pytest.raises(ConfigError, match=message):
        validate({"methods": METHODS, "task": task, **extra})


def test_task_error_names_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[task]\nkind = "segmentation"\nbox = "top"\n[[methods]]\nname = "gradcam"\n')
    with pytest.raises(ConfigError, match=r"exp\.toml: task: .*task\.box is a detection key"):
        load_config(path)


# ---------------------------------------------------------------- ground truth


def test_shapes_masks_are_the_shapes_with_classes_from_one():
    source = open_source(validate({"methods": METHODS}).data, Path("."), seed=3)
    batch = source.batch([0, 1, 2, 5])
    assert batch.masks is not None and batch.masks.shape == (4, 64, 64)
    for row, index in enumerate(batch.indices):
        sample = shapes.render(3, index, 64)
        mask = batch.masks[row].numpy()
        assert set(np.unique(mask)) == {0, sample.label + 1}
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == sample.box
        assert tuple(batch.boxes[row].tolist()) == sample.box


def _image(path: Path, size: tuple[int, int], colour=(40, 90, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _coco(path: Path, images, annotations) -> Path:
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def _detection_data(tmp_path: Path) -> Path:
    _image(tmp_path / "imgs" / "a.png", (40, 20))  # (width, height)
    _image(tmp_path / "imgs" / "sub" / "b.png", (32, 32))
    return _coco(
        tmp_path / "instances.json",
        [{"id": 1, "file_name": "a.png", "width": 40, "height": 20},
         {"id": "b", "file_name": "elsewhere/sub/b.png"}],
        [{"image_id": 1, "bbox": [4, 2, 10, 6], "category_id": 2},
         {"image_id": 1, "bbox": [20, 4, 16, 12], "category_id": 3},  # the largest: kept
         {"image_id": 1, "bbox": [0, 0, 40, 20], "category_id": 1, "iscrowd": 1},
         {"image_id": "b", "bbox": [8, 8, 8, 16], "category_id": 1}],
    )  # fmt: skip


def test_coco_boxes_are_matched_scaled_and_the_largest_is_kept(tmp_path):
    _detection_data(tmp_path)
    config = validate({
        "methods": METHODS, "task": {"kind": "detection"},
        "data": {"source": "imgs", "annotations": "instances.json", "image_size": 16},
    })  # fmt: skip
    source = open_source(config.data, tmp_path, seed=0, task="detection")
    batch = source.batch([0, 1])
    assert batch.ids == ["a.png", "sub/b.png"]
    # a.png: x * 16/40, y * 16/20; b.png (size read from the file): * 16/32
    expected = [[20 * 0.4, 4 * 0.8, 36 * 0.4, 16 * 0.8], [4, 4, 8, 12]]
    assert batch.boxes.tolist() == [[round(v) for v in box] for box in expected]
    assert batch.labels.tolist() == [3, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not a JSON file"),
        ("[]", "expected a JSON object"),
        ('{"images": [], "annotations": {}}', "expected a list 'annotations'"),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\]: missing or malformed 'file"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2, '
         '"bbox": [0, 0, 1, 1], "category_id": 1}]}', "image_id 2 is not in 'images'"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, '
         '"bbox": [0, 0, 1], "category_id": 1}]}', "bbox must be"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, '
         '"bbox": [0, 0, -1, 1], "category_id": 1}]}', "must be positive"),
        ('{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1, '
         '"bbox": [0, 0, 1, 1], "category_id": "cat"}]}', "'category_id'"),
    ],
)  # fmt: skip
def test_malformed_annotations_are_config_errors(tmp_path, content, message):
    _image(tmp_path / "imgs" / "a.png", (8, 8))
    if content is not None:
        (tmp_path / "instances.json").write_text(content)
    config = validate({
        "methods": METHODS, "task": {"kind": "detection"},
        "data": {"source": "imgs", "annotations": "instances.json", "image_size": 8},
    })  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        open_source(config.data, tmp_path, seed=0, task="detection")


def test_ground_truth_errors_come_before_the_model_is_built(tmp_path, monkeypatch):
    import camkit.experiment.runner as runner

    def no_model(*_args, **_kwargs):
        raise AssertionError("the model was built before the ground truth was checked")

    monkeypatch.setattr(runner, "build_model", no_model)
    _detection_data(tmp_path)
    _image(tmp_path / "imgs" / "c.png", (8, 8))  # no annotation
    path = tmp_path / "exp.toml"
    path.write_text(
        f'[task]\nkind = "detection"\n[model]\nsource = "python:{MODELS.as_posix()}:detector"\n'
        '[data]\nsource = "imgs"\nannotations = "instances.json"\nimage_size = 16\n'
        f'[[methods]]\nname = "gradcam"\nlayer = "features"\n[output]\nfolder = "{tmp_path}/out"\n'
    )
    with pytest.raises(DataError, match=r"image c\.png has no box"):
        run(load_config(path), progress=False)
    (tmp_path / "imgs" / "c.png").unlink()
    (tmp_path / "instances.json").write_text("{")
    with pytest.raises(ConfigError, match=r"exp\.toml: data\.annotations: .* not a JSON file"):
        run(load_config(path), progress=False)
    mask_config = tmp_path / "seg.toml"
    mask_config.write_text(
        '[task]\nkind = "segmentation"\n[data]\nsource = "imgs"\nimage_size = 16\n'
        f'[[methods]]\nname = "gradcam"\n[output]\nfolder = "{tmp_path}/out"\n'
    )
    with pytest.raises(DataError, match=r"image a\.png has no mask file a\.mask\.png"):
        run(load_config(mask_config), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kind", "message"),
    [("detection", "needs a detector"), ("segmentation", r"needs \(B, classes, H, W\) outputs")],
)
def test_a_model_of_another_task_fails_before_any_output(tmp_path, kind, message):
    config = load_config(
        ROOT / "examples" / "quickstart.toml",
        overrides=[f"task.kind={kind}", "data.count=1"],
        output=tmp_path / "out",
    )
    with pytest.raises(ConfigError, match=f"quickstart.toml: task: .*{message}"):
        run(config, progress=False)
    assert not (tmp_path / "out").exists()


def test_mask_files_are_read_resized_and_never_images(tmp_path):
    _image(tmp_path / "a.png", (8, 4))
    mask = np.zeros((4, 8), np.uint8)
    mask[1:3, 2:6] = 7
    Image.fromarray(mask, mode="L").save(tmp_path / "a.mask.png")
    Image.new("RGB", (8, 4)).save(tmp_path / "b.png")
    Image.new("RGB", (8, 4)).save(tmp_path / "b.mask.png")  # three channels: refused
    data = validate({"methods": METHODS, "data": {"source": ".", "image_size": [8, 16]}}).data
    source = open_source(data, tmp_path, seed=0, task="segmentation")
    assert len(source) == 2  # the mask files are not images
    batch = source.batch([0])
    expected = np.zeros((8, 16), np.int64)
    expected[2:6, 4:12] = 7  # nearest: every mask pixel becomes 2 x 2
    np.testing.assert_array_equal(batch.masks[0].numpy(), expected)
    with pytest.raises(DataError, match=r"cannot read mask .*b\.mask\.png.*one channel"):
        source.batch([1])
    assert len(open_source(data, tmp_path, seed=0)) == 4  # classification reads them as images


# ---------------------------------------------------------------- targets


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def _matched(detections, box, label, threshold):
    best = 0.0
    for b, s, c in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                       detections["labels"].tolist()):  # fmt: skip
        overlap = _iou(b, box)
        if c == label and overlap >= threshold:
            best = max(best, s * overlap)
    return best


def test_matched_box_is_the_best_score_times_overlap_above_the_threshold():
    from camkit.engine.outputs import scores_of

    torch.manual_seed(0)
    detections = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [2, 2, 12, 12], [0, 0, 4, 4], [20, 20, 30, 30]]),
         "scores": torch.tensor([0.3, 0.9, 0.95, 0.8]), "labels": torch.tensor([1, 1, 1, 2])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.long)},
    ]  # fmt: skip
    packed = scores_of(detections)
    reference = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10]])
    for threshold in (0.0, 0.5, 0.7, 1.0):
        target = MatchedBox(reference, torch.tensor([1, 1]), threshold)
        got = target(packed, torch.arange(2))
        expected = [_matched(d, [0, 0, 10, 10], 1, threshold) for d in detections]
        torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-7)
    # at threshold 0 it is camkit.targets.DetectionTarget
    plain = DetectionTarget(reference, [1, 1])(packed, torch.arange(2))
    torch.testing.assert_close(MatchedBox(reference, torch.tensor([1, 1]), 0.0)(packed,
                               torch.arange(2)), plain)  # fmt: skip
    # rows of perturbed copies find their image's box through the index
    rows = MatchedBox(reference[:1], torch.tensor([2]), 0.0)(
        packed[:1].repeat(3, 1, 1), torch.zeros(3, dtype=torch.long)
    )
    torch.testing.assert_close(rows, torch.zeros(3))  # class 2 does not overlap the box


def test_region_target_sums_each_images_class_inside_its_region():
    torch.manual_seed(0)
    scores = torch.randn(3, 4, 5, 6)
    regions = torch.rand(2, 5, 6) > 0.5
    classes = torch.tensor([2, 3])
    index = torch.tensor([0, 1, 1])
    got = RegionTarget(classes, regions)(scores, index)
    expected = [sum(float(scores[r, int(classes[i]), y, x]) for y in range(5) for x in range(6)
                    if regions[i, y, x]) for r, i in enumerate(index.tolist())]  # fmt: skip
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    with pytest.raises(TargetError, match="out of range"):
        RegionTarget(torch.tensor([4, 0]), regions)(scores, index)
    with pytest.raises(TargetError, match="segmentation"):
        RegionTarget(classes, regions)(scores[:, :, 0, 0], index)


# ---------------------------------------------------------------- localization in a mask


def test_mask_localization_equals_the_box_metrics_on_box_masks():
    torch.manual_seed(0)
    maps = torch.rand(16, 20, 24)
    x0, y0 = torch.randint(0, 12, (16,)), torch.randint(0, 10, (16,))
    boxes = torch.stack([x0, y0, x0 + torch.randint(1, 12, (16,)),
                         y0 + torch.randint(1, 10, (16,))], 1)  # fmt: skip
    regions = box_masks(boxes, 20, 24)
    for tolerance in (0.0, 2.5, 6.0):
        torch.testing.assert_close(
            mask_pointing_game(maps, regions, tolerance), pointing_game(maps, boxes, tolerance)
        )
    torch.testing.assert_close(mask_energy(maps, regions), energy_pointing_game(maps, boxes))


def test_mask_localization_by_hand():
    maps = torch.zeros(3, 6, 6)
    maps[:, 0, 0] = 1.0  # the peak at (row 0, col 0)
    maps[:, 5, 5] = 0.5
    regions = torch.zeros(3, 6, 6, dtype=torch.bool)
    regions[0, 2, 3] = True  # distance sqrt(4 + 9) = 3.606 from the peak
    regions[1, 5, 5] = True
    regions[1, 0, 1] = True  # distance 1
    got = mask_pointing_game(maps, regions, tolerance=3.6)
    assert got[:2].tolist() == [0.0, 1.0] and math.isnan(got[2])  # an empty region: NaN
    assert mask_pointing_game(maps, regions, tolerance=3.61)[0] == 1.0
    energy = mask_energy(maps, regions)
    assert energy[0] == 0.0 and energy[1] == pytest.approx(0.5 / 1.5) and math.isnan(energy[2])


# ---------------------------------------------------------------- measured by hand


def _curve(score, image, saliency, step, mode):
    """Deletion or insertion by hand: replace pixels in the map's order, zeros substrate."""
    h, w = saliency.shape
    order = torch.argsort(saliency.flatten(), descending=True, stable=True).tolist()
    points = math.ceil(h * w / step) + 1
    values = []
    for k in range(points):
        changed = torch.zeros(h * w, dtype=torch.bool)
        changed[order[: k * step]] = True
        changed = changed.reshape(1, h, w)
        x = (
            torch.where(changed, 0.0, image)
            if mode == "deletion"
            else torch.where(changed, image, 0.0)
        )
        values.append(score(x[None]))
    ys = np.asarray(values)
    return float(((ys[1:] + ys[:-1]) / 2).sum() / (points - 1))


SPEC = MetricsSpec(
    compute=["average_drop", "deletion", "insertion", "pointing_game", "energy_pointing_game"],
    step=97, tolerance=2.0, insertion_substrate="zeros",
)  # fmt: skip


def _check_measured(task, model, batch, score_of, maps):
    prepared = task.prepare(model, batch, batch.images)
    measured = task.measure(SPEC, model, batch.images, maps, prepared, indices=batch.indices,
                            seed=0)  # fmt: skip
    for i in range(len(batch.indices)):

        def score(x, i=i):
            with torch.no_grad():
                return score_of(model(x), i, prepared)

        clean = score(batch.images[i : i + 1])
        assert float(prepared.clean[i]) == pytest.approx(clean, rel=1e-5, abs=1e-6)
        for mode in ("deletion", "insertion"):
            expected = _curve(score, batch.images[i], maps[i], SPEC.step, mode)
            assert measured[mode][i] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        if clean != 0:  # average drop divides by the clean score
            drop = max(clean - _score_map_multiplied(score, batch.images[i], maps[i]), 0.0) / clean
            assert measured["average_drop"][i] == pytest.approx(drop, rel=1e-4, abs=1e-7)
    return prepared, measured


def _score_map_multiplied(score, image, saliency):
    return score((image * saliency)[None])


def _batch(count=2, size=24, seed=0, **fields):
    torch.manual_seed(seed)
    return Batch(list(range(count)), [f"img{i}" for i in range(count)],
                 torch.rand(count, 3, size, size), fields.pop("labels", None),
                 fields.pop("boxes", None), masks=fields.pop("masks", None))  # fmt: skip


def test_detection_metrics_by_hand():
    model = TinyDetector()
    boxes = torch.tensor([[0, 0, 12, 12], [12, 12, 24, 24]])
    batch = _batch(boxes=boxes, labels=torch.tensor([1, 2]))
    maps = torch.rand(2, 24, 24)
    for box in ("top", "ground-truth"):
        task = Task(TaskSpec(kind="detection", box=box, iou=0.3))

        def score_of(out, i, prepared):
            ref = prepared.boxes[i].tolist()
            return _matched(out[0], ref, int(prepared.classes[i]), 0.3)

        prepared, measured = _check_measured(task, model, batch, score_of, maps)
        if box == "top":  # the highest-scoring detection of the clean image
            with torch.no_grad():
                out = model(batch.images)
            for i in range(2):
                j = int(out[i]["scores"].argmax())
                assert prepared.boxes[i].tolist() == out[i]["boxes"][j].tolist()
                assert int(prepared.classes[i]) == int(out[i]["labels"][j])
        else:
            assert prepared.boxes.tolist() == boxes.float().tolist()
        # localization in the ground-truth box
        expected = [float(maps[i, int(b[1]) : int(b[3]), int(b[0]) : int(b[2])].sum()
                          / maps[i].sum()) for i, b in enumerate(boxes)]  # fmt: skip
        np.testing.assert_allclose(measured["energy_pointing_game"], expected, rtol=1e-5)


def test_detection_without_boxes_is_a_target_error():
    class Empty(torch.nn.Module):
        def forward(self, x):
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                     "labels": torch.zeros(0, dtype=torch.long)} for _ in x]  # fmt: skip

    with pytest.raises(TargetError, match="finds no box on image img0"):
        Task(TaskSpec(kind="detection")).prepare(Empty(), _batch(), _batch().images)
    with pytest.raises(TargetError, match="needs a detector"):
        Task(TaskSpec(kind="detection")).prepare(TinyEmbedder(), _batch(), _batch().images)


@pytest.mark.parametrize("softmax", [True, False])
def test_segmentation_metrics_by_hand(softmax):
    model = TinySegmenter()
    masks = torch.zeros(2, 24, 24, dtype=torch.long)
    masks[0, 3:15, 4:12] = 2
    masks[0, 20:, 20:] = 1
    masks[1, 10:20, 10:20] = 4
    batch = _batch(masks=masks)
    maps = torch.rand(2, 24, 24)
    for region in ("ground-truth", "predicted"):
        for targets in ("label", "predicted", 3):
            task = Task(TaskSpec(kind="segmentation", region=region), targets, softmax=softmax)

            def score_of(out, i, prepared, region=region):
                c = int(prepared.classes[i])
                if region == "ground-truth":
                    inside = masks[i] == c
                else:
                    with torch.no_grad():
                        inside = model(batch.images)["out"][i].argmax(0) == c
                if not softmax:  # the explained score: the logits' sum
                    return float(out["out"][0, c][inside].sum())
                # measured with softmax: the class's mean probability in the region
                probability = out["out"][0].softmax(0)[c]
                return float(probability[inside].mean()) if inside.any() else 0.0

            prepared, measured = _check_measured(task, model, batch, score_of, maps)
            with torch.no_grad():
                predicted = model(batch.images)["out"].argmax(1)
            for i in range(2):
                c = int(prepared.classes[i])
                if targets == "label":  # the most frequent ground-truth class
                    assert c == [2, 4][i]
                elif targets == "predicted":  # the most frequent predicted class, not 0
                    counts = torch.bincount(predicted[i].flatten(), minlength=5)[1:]
                    assert c == int(counts.argmax()) + 1
                else:
                    assert c == 3
                inside = masks[i] == c
                energy = measured["energy_pointing_game"][i]
                if inside.any():
                    assert energy == pytest.approx(float(maps[i][inside].sum() / maps[i].sum()))
                else:  # no ground truth of the class: nothing to point at
                    assert math.isnan(energy)


def test_segmentation_label_of_an_empty_mask_is_a_target_error():
    batch = _batch(masks=torch.zeros(2, 24, 24, dtype=torch.long))
    with pytest.raises(TargetError, match=r"background \(0\) only"):
        Task(TaskSpec(kind="segmentation"), "label").prepare(TinySegmenter(), batch, batch.images)


def test_multilabel_metrics_by_hand():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5))  # fmt: skip
    batch = _batch(labels=torch.tensor([4, 1]))
    maps = torch.rand(2, 24, 24)
    for targets in ("predicted", "label", 2):
        task = Task(TaskSpec(kind="multilabel"), targets)

        def score_of(out, i, prepared):
            return float(out[0, int(prepared.classes[i])].sigmoid())

        prepared, _ = _check_measured(task, model, batch, score_of, maps)
        with torch.no_grad():
            top = model(batch.images).argmax(1).tolist()
        expected = {"predicted": top, "label": [4, 1], 2: [2, 2]}[targets]
        assert prepared.classes.tolist() == expected
        assert prepared.predicted.tolist() == top


def test_embedding_metrics_by_hand():
    model = TinyEmbedder()
    batch = _batch(count=3)
    maps = torch.rand(3, 24, 24)
    with torch.no_grad():
        own = model(batch.images)
    concept = torch.randn(8)
    for reference in (None, concept):
        task = Task(TaskSpec(kind="embedding"), reference=reference)

        def score_of(out, i, prepared, reference=reference):
            ref = own[i] if reference is None else reference
            return float(out[0] @ ref / (out[0].norm() * ref.norm()))

        prepared, _ = _check_measured(task, model, batch, score_of, maps)
        if reference is None:
            torch.testing.assert_close(prepared.clean, torch.ones(3))


# ---------------------------------------------------------------- whole runs


@pytest.mark.parametrize("kind", EXAMPLES)
def test_examples_run(kind, tmp_path):
    config = load_config(
        ROOT / "examples" / f"task-{kind}.toml",
        overrides=["data.count=2", "metrics.step=2048", "batch_size=2"],
        output=tmp_path / "out",
    )
    assert config.task.kind == kind
    result = run(config, progress=False)
    assert result.images == 2
    rows = (tmp_path / "out" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * len(config.methods)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    for baseline in ("random", "blurred_random"):
        assert set(summary["baselines"][baseline]) == set(config.metrics.compute)
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"Task: {kind}." in page
    _check_html(page)
    # labels counted as the task counts classes: from 1 in detection and segmentation
    with np.load(tmp_path / "out" / "maps" / str(config.methods[0].id) / "shard-00000.npz") as d:
        stored = d["label"].tolist()
    shift = 1 if kind in ("detection", "segmentation") else 0
    assert stored == [shapes.render(0, i, 64).label + shift for i in range(2)]
    data = json.loads(page.split('id="data">')[1].split("</script>")[0])
    names = ("background", *shapes.CLASSES) if shift else shapes.CLASSES
    for image, label in zip(data["images"], stored):
        assert image["label"] == names[label]
        if kind in ("detection", "segmentation", "embedding"):  # no predicted class
            assert image["predicted"] == "n/a" and image["correct"] is None


def _check_html(page: str) -> None:
    """Every tag opened is closed in order; nothing is fetched from elsewhere."""
    from html.parser import HTMLParser

    void = {"meta", "br", "input", "img", "link", "hr", "col", "source", "wbr", "path", "line",
            "rect", "circle", "polyline", "polygon", "stop", "use"}  # fmt: skip
    stack: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag not in void:
                stack.append(tag)

        def handle_startendtag(self, tag, attrs):
            pass

        def handle_endtag(self, tag):
            if tag in void:
                return
            assert stack and stack[-1] == tag, (tag, stack[-5:])
            stack.pop()

    Parser().feed(page)
    assert stack == []
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page


def _write_run(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(
        body + f'\n[metrics]\nstep = 128\nbaselines = true\n[output]\nfolder = "{tmp_path}/out"\n'
    )
    return path


def _shard(tmp_path: Path, method: str = "gradcam") -> dict[str, np.ndarray]:
    with np.load(tmp_path / "out" / "maps" / method / "shard-00000.npz") as data:
        return {k: data[k] for k in data.files}


def test_detection_run_on_coco_annotated_files(tmp_path):
    _detection_data(tmp_path)
    path = _write_run(tmp_path, (
        f'[task]\nkind = "detection"\nbox = "ground-truth"\niou = 0.2\n'
        f'[model]\nsource = "python:{MODELS.as_posix()}:detector"\n'
        '[data]\nsource = "imgs"\nannotations = "instances.json"\nimage_size = 16\n'
        '[[methods]]\nname = "gradcam"\nlayer = "features"\n'
    ))  # fmt: skip
    run(load_config(path), progress=False)
    shard = _shard(tmp_path)
    np.testing.assert_array_equal(shard["box"], [[8, 3, 14, 13], [4, 4, 8, 12]])
    np.testing.assert_array_equal(shard["explained_box"], shard["box"].astype(np.float32))
    np.testing.assert_array_equal(shard["target"], [3, 1])
    for i, (x0, y0, x1, y1) in enumerate(shard["box"]):
        heat = shard["maps"][i].astype(np.float64)
        expected = heat[y0:y1, x0:x1].sum() / heat.sum() if heat.sum() > 0 else math.nan
        np.testing.assert_allclose(shard["metric_energy_pointing_game"][i], expected, rtol=1e-3)
    # the pictures outline the ground truth in green and the explained box in magenta
    picture = np.asarray(Image.open(tmp_path / "out" / "report" / "_input" / "000000.png"))
    assert (picture[3, 8:14] == [255, 0, 255]).all()  # drawn after the ground truth
    assert (picture[3:13, 8] == [255, 0, 255]).all()


def test_segmentation_run_on_mask_files(tmp_path):
    for name, value in (("a", 2), ("b", 3)):
        _image(tmp_path / "imgs" / f"{name}.png", (16, 16), colour=(value * 40, 80, 120))
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 2:10] = value
        mask[0:2, 0:2] = 1
        Image.fromarray(mask, mode="L").save(tmp_path / "imgs" / f"{name}.mask.png")
    path = _write_run(tmp_path, (
        'targets = "label"\n[task]\nkind = "segmentation"\n'
        f'[model]\nsource = "python:{MODELS.as_posix()}:segmenter"\n'
        '[data]\nsource = "imgs"\nimage_size = 16\n'
        '[[methods]]\nname = "gradcam"\nlayer = "features"\n'
    ))  # fmt: skip
    run(load_config(path), progress=False)
    shard = _shard(tmp_path)
    assert shard["id"].tolist() == ["a.png", "b.png"]
    np.testing.assert_array_equal(shard["target"], [2, 3])
    for i in range(2):
        heat = torch.from_numpy(shard["maps"][i].astype(np.float32))[None]
        region = torch.zeros(1, 16, 16, dtype=torch.bool)
        region[0, 4:12, 2:10] = True
        row, col = divmod(int(heat.flatten().argmax()), 16)
        near = any((row - r) ** 2 + (col - c) ** 2 <= (15 * 16 / 224) ** 2
                   for r in range(4, 12) for c in range(2, 10))  # fmt: skip
        assert shard["metric_pointing_game"][i] == float(near)
    picture = np.asarray(Image.open(tmp_path / "out" / "report" / "_input" / "000000.png"))
    assert (picture[4, 2:10] == [0, 255, 0]).all() and (picture[0, 0] != [0, 255, 0]).any()


def test_embedding_run_to_a_concept_of_reference_images(tmp_path):
    _image(tmp_path / "imgs" / "x.png", (16, 16), colour=(200, 30, 30))
    for i, colour in enumerate([(10, 200, 10), (30, 180, 60)]):
        _image(tmp_path / "concept" / f"{i}.png", (16, 16), colour=colour)
    path = _write_run(tmp_path, (
        '[task]\nkind = "embedding"\nreference = ["concept"]\n'
        f'[model]\nsource = "python:{MODELS.as_posix()}:embedder"\n'
        '[data]\nsource = "imgs"\nimage_size = 16\n'
        '[[methods]]\nname = "gradcam"\nlayer = "features"\n'
    ))  # fmt: skip
    run(load_config(path), progress=False)
    model = TinyEmbedder().eval()

    def read(p):
        return torch.from_numpy(np.asarray(Image.open(p), np.float32).transpose(2, 0, 1) / 255)

    with torch.no_grad():
        concept = model(torch.stack([read(tmp_path / "concept" / f"{i}.png") for i in range(2)]))
        image = model(read(tmp_path / "imgs" / "x.png")[None])[0]
    expected = float(image @ concept.mean(0) / (image.norm() * concept.mean(0).norm()))
    assert _shard(tmp_path)["confidence"][0] == pytest.approx(expected, rel=1e-5)
    missing = _write_run(tmp_path, (
        '[task]\nkind = "embedding"\nreference = ["nowhere/*.png"]\n'
        '[data]\nsource = "imgs"\nimage_size = 16\n[[methods]]\nname = "gradcam"\n'
    ))  # fmt: skip
    with pytest.raises(ConfigError, match=r"task\.reference: no images"):
        run(load_config(missing), progress=False, overwrite=True)


def test_baselines_of_a_task_are_measured_on_its_ground_truth(tmp_path):
    from camkit.experiment.baselines import random_maps

    config = load_config(
        ROOT / "examples" / "task-segmentation.toml",
        overrides=[
            "data.count=2",
            "batch_size=2",
            "methods=[{name: gradcam, layer: backbone.16}]",
            "metrics.compute=[energy_pointing_game]",
        ],
        output=tmp_path / "out",
    )
    run(config, progress=False)
    with np.load(tmp_path / "out" / "baselines" / "random" / "shard-00000.npz") as data:
        got = data["metric_energy_pointing_game"]
    maps = random_maps("random", [0, 1], (64, 64), seed=0).double().numpy()
    for i in range(2):
        sample = shapes.render(0, i, 64)
        assert got[i] == pytest.approx(maps[i][sample.mask].sum() / maps[i].sum(), rel=1e-5)


def test_outline_draws_boxes_and_mask_edges():
    region = np.zeros((8, 8), bool)
    region[2:6, 2:6] = True
    picture = np.asarray(outline(Image.new("RGB", (8, 8)), region=region,
                                 explained=(0, 0, 8, 8), box=(-1, -1, -1, -1)))  # fmt: skip
    edge = region & ~np.pad(region, 1)[2:, 1:-1] | region & ~np.pad(region, 1)[:-2, 1:-1]
    edge |= region & ~np.pad(region, 1)[1:-1, 2:] | region & ~np.pad(region, 1)[1:-1, :-2]
    assert (picture[edge] == [0, 255, 0]).all()
    assert (picture[3:5, 3:5] == 0).all()  # the interior stays
    assert (picture[0, :] == [255, 0, 255]).all() and (picture[:, 7] == [255, 0, 255]).all()


def test_road_of_a_task_is_road_on_the_target_score():
    from camkit.experiment.compute import noise_generator
    from camkit.metrics import road

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5))  # fmt: skip
    batch = _batch(count=2, size=16)
    batch.indices = [7, 3]  # the noise streams follow the images' indices
    maps = torch.rand(2, 16, 16)
    spec = MetricsSpec(compute=["road_morf", "road_lerf"], step=32, tolerance=1.0,
                       road_removed=[0.25, 0.5])  # fmt: skip
    task = Task(TaskSpec(kind="multilabel"), 2)
    prepared = task.prepare(model, batch, batch.images)
    measured = task.measure(spec, model, batch.images, maps, prepared, indices=batch.indices,
                            seed=5)  # fmt: skip
    for i, index in enumerate(batch.indices):
        for order in ("morf", "lerf"):
            expected = road(
                lambda x: model(x)[:, 2:3].sigmoid(), batch.images[i : i + 1], maps[i : i + 1],
                torch.zeros(1, dtype=torch.long), order=order, removed=[0.25, 0.5],
                softmax=False, generator=noise_generator(5, index, f"road_{order}"),
            )  # fmt: skip
            assert measured[f"road_{order}"][i] == pytest.approx(float(expected), rel=1e-5)
