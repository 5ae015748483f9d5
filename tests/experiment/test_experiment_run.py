"""``camkit run``: outputs, their content, resume after interruption, refusal of changes."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import camkit
from camkit import zoo
from camkit.cli import main
from camkit.errors import ConfigError, OutputFolderError
from camkit.experiment import load_config, run
from camkit.methods.gradient import GradCAM


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_output_is_written(finished):
    config, result = finished
    out = result.folder
    assert result.images == 8 and result.computed == 4 and result.skipped == 0
    for name in ("metrics.csv", "summary.json", "config.resolved.toml", "report.html"):
        assert (out / name).is_file()
    for method in ("cam", "gradcam"):
        assert sorted(p.name for p in (out / "maps" / method).iterdir()) == [
            "shard-00000.npz",
            "shard-00001.npz",
        ]
        overlays = sorted((out / "overlays" / method).iterdir())
        assert [p.name for p in overlays] == [f"{i:06d}.png" for i in range(8)]
        assert Image.open(overlays[0]).size == (64, 64)
    assert load_config(out / "config.resolved.toml").fingerprint() == config.fingerprint()


def test_maps_are_the_methods_maps_on_the_generated_images(finished):
    _, result = finished
    images, _, _ = zoo.shapes.generate(8, seed=0)
    model = zoo.load_model("shapes-cnn")
    expected = camkit.create("gradcam", model, "features")(images[4:]).maps
    with np.load(result.folder / "maps" / "gradcam" / "shard-00001.npz") as shard:
        assert shard["index"].tolist() == [4, 5, 6, 7]
        assert shard["maps"].dtype == np.float16
        np.testing.assert_allclose(shard["maps"], expected.numpy(), atol=1e-3)


def test_metrics_csv_rows_match_independent_checks(finished):
    config, result = finished
    rows = _rows(result.folder)
    assert len(rows) == 16
    assert [r["method"] for r in rows] == ["cam"] * 8 + ["gradcam"] * 8
    images, labels, boxes = zoo.shapes.generate(8, seed=0)
    model = zoo.load_model("shapes-cnn")
    with torch.inference_mode():
        probs = model(images).softmax(1)
    for row in rows:
        i = int(row["index"])
        assert row["image"] == f"shapes-{i:05d}" and int(row["label"]) == labels[i]
        assert int(row["target"]) == int(row["predicted"]) == int(probs[i].argmax())
        assert float(row["confidence"]) == pytest.approx(probs[i].max().item(), rel=1e-5)
        drop = float(row["average_drop"])
        assert 0 <= drop <= 1 and float(row["increase_in_confidence"]) in (0.0, 1.0)
        assert 0 <= float(row["deletion"]) <= 1 and 0 <= float(row["insertion"]) <= 1
    # the pointing game by hand, from the stored maps: is the maximum inside the box?
    tolerance = config.metrics.tolerance
    with np.load(result.folder / "maps" / "cam" / "shard-00000.npz") as shard:
        maps = shard["maps"].astype(np.float32)
    for row in rows[:4]:
        i = int(row["index"])
        r, c = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        x0, y0, x1, y1 = boxes[i].tolist()
        dx, dy = max(x0 - c, 0, c - (x1 - 1)), max(y0 - r, 0, r - (y1 - 1))
        assert float(row["pointing_game"]) == float(math.hypot(dx, dy) <= tolerance)
        inside = maps[i][y0:y1, x0:x1].sum() / maps[i].sum()
        assert float(row["energy_pointing_game"]) == pytest.approx(inside, rel=1e-3)


def test_summary_means_counts_and_centre_baseline(finished):
    config, result = finished
    summary = json.loads((result.folder / "summary.json").read_text())
    rows = _rows(result.folder)
    for method in ("cam", "gradcam"):
        for name in config.metrics.compute:
            values = [float(r[name]) for r in rows if r["method"] == method]
            stat = summary["methods"][method][name]
            assert stat["count"] == 8 and stat["mean"] == pytest.approx(np.mean(values))
    _, _, boxes = zoo.shapes.generate(8, seed=0)
    centre_hits = []
    for x0, y0, x1, y1 in boxes.tolist():
        dx, dy = max(x0 - 32, 0, 32 - (x1 - 1)), max(y0 - 32, 0, 32 - (y1 - 1))
        centre_hits.append(math.hypot(dx, dy) <= config.metrics.tolerance)
    baseline = summary["baselines"]["centre"]["pointing_game"]
    assert baseline["mean"] == pytest.approx(np.mean(centre_hits)) and baseline["count"] == 8
    assert summary["images"] == 8 and 0 <= summary["model_accuracy"] <= 1


def test_report_is_self_contained(finished):
    _, result = finished
    text = (result.folder / "report.html").read_text()
    # no network: no external sources, links or style imports
    assert not re.search(r'(src|href)="(https?:|//)', text) and "@import" not in text
    assert "gradcam" in text and "chance: centre" in text and "shapes-00002" in text
    assert "deletion AUC ↓" in text and "insertion AUC ↑" in text and "[[methods]]" in text
    # 3 images (output.report_images): input, then map per method, beside the report
    pictures = sorted(
        p.relative_to(result.folder / "report").as_posix()
        for p in (result.folder / "report").rglob("*.png")
    )
    names = [f"{i:06d}.png" for i in range(3)]
    expected = [f"{m}/map-{n}" for m in ("cam", "gradcam") for n in names]
    assert pictures == sorted(expected + [f"_input/{n}" for n in names])


def test_interrupted_run_resumes_to_identical_metrics(finished, small_config, monkeypatch):
    _, complete = finished
    config = load_config(small_config)
    calls = {"n": 0}
    original = GradCAM.weights

    def flaky(self, ctx):
        calls["n"] += 1
        if calls["n"] > 2:  # the first-image check, then shard 0
            raise KeyboardInterrupt
        return original(self, ctx)

    monkeypatch.setattr(GradCAM, "weights", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(config, progress=False)
    out = Path(config.output.folder)
    assert (out / "maps" / "cam" / "shard-00001.npz").exists()
    assert (out / "maps" / "gradcam" / "shard-00000.npz").exists()
    assert not (out / "maps" / "gradcam" / "shard-00001.npz").exists()
    assert not (out / "metrics.csv").exists()
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(GradCAM, "weights", original)
    result = run(config, progress=False)
    assert (result.computed, result.skipped) == (1, 3)
    expected = (complete.folder / "metrics.csv").read_bytes()
    assert (out / "metrics.csv").read_bytes() == expected
    # a lost shard is recomputed, the rest is kept
    (out / "maps" / "cam" / "shard-00000.npz").unlink()
    result = run(config, progress=False)
    assert (result.computed, result.skipped) == (1, 3)
    assert (out / "metrics.csv").read_bytes() == expected


def test_a_changed_config_is_refused_unless_overwrite(small_config):
    run(load_config(small_config), progress=False)
    changed = load_config(small_config, overrides=["methods[1].layer=block"])
    with pytest.raises(ConfigError, match=r"different configuration.*methods\[1\]\.layer"):
        run(changed, progress=False)
    result = run(changed, overwrite=True, progress=False)
    assert result.computed == 4 and result.skipped == 0
    resolved = (result.folder / "config.resolved.toml").read_text()
    assert 'layer = "block"' in resolved
    # cam's layer is located on the first image, and named in a comment
    assert resolved.endswith(
        "# Layers located on the first image (methods without `layer`):\n#   cam: features\n"
    )


def test_a_foreign_folder_is_refused_even_with_overwrite(small_config, tmp_path):
    out = tmp_path / "out"
    (out / "maps").mkdir(parents=True)
    (out / "maps" / "mine.npz").write_text("mine")
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputFolderError, match=r"not created by camkit.*touch: maps/"):
            run(load_config(small_config), overwrite=overwrite, progress=False)
    assert sorted(p.name for p in out.rglob("*")) == ["maps", "mine.npz", "notes.txt"]


def test_cli_run(small_config, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code = main(
        ["run", str(small_config), "--output", str(out), "--set", "data.count=4", "--quiet"]
    )
    assert code == 0
    assert len(_rows(out)) == 8
    assert "4 images, 2 shards computed" in capsys.readouterr().out
    assert main(["run", str(small_config), "--set", "data.cuont=4"]) == 2
    assert "data.cuont: unknown key" in capsys.readouterr().err


def test_image_folder_without_boxes(tmp_path):
    images, _, _ = zoo.shapes.generate(3, seed=9)
    for i, image in enumerate(images):
        camkit.viz.to_pil(image).resize((80, 80)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    path = tmp_path / "exp.yaml"
    path.write_text(
        "data: {source: '.', image_size: 64}\nmethods: [{name: gradcam}]\n"
        f"output: {{folder: '{(tmp_path / 'out').as_posix()}', overlays: false}}\n"
        "metrics: {compute: [pointing_game, deletion], step: 1024}\nbatch_size: 2\n"
    )
    result = run(load_config(path), progress=False)
    rows = _rows(result.folder)
    assert [r["image"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(r["pointing_game"] == "" and r["label"] == "" for r in rows)
    assert all(float(r["deletion"]) >= 0 for r in rows)
    summary = json.loads((result.folder / "summary.json").read_text())
    assert summary["methods"]["gradcam"]["pointing_game"] == {
        "mean": None,
        "count": 0,
        "ci95": None,
    }
    # no boxes: no centre baseline, but the random ones
    assert set(summary["baselines"]) == {"random", "blurred_random"}
    assert not (result.folder / "overlays").exists()


def test_errors_found_while_loading_name_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('[data]\nsource = "no-such-folder"\n[[methods]]\nname = "cam"\n')
    config = load_config(path, output=tmp_path / "out")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: data.source: "):
        run(config, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_missing_layer_and_an_impossible_target_name_their_keys(small_config, tmp_path):
    config = load_config(small_config, overrides=["methods[1].layer=featurs"])
    with pytest.raises(ConfigError, match=r"methods\[1\]\.layer: no layer 'featurs'.*'features'"):
        run(config, progress=False)
    assert not Path(config.output.folder).exists()  # fix the typo and run again: no refusal
    config = load_config(small_config, overrides=["targets=9"], output=tmp_path / "t")
    with pytest.raises(ConfigError, match=r"exp\.toml: targets: target class 9 is out of range"):
        run(config, progress=False)


def test_python_model_with_checkpoint(tmp_path):
    (tmp_path / "net.py").write_text(
        "from camkit.zoo.model import ShapesCNN\n"
        "def build(width=8):\n    return ShapesCNN(channels=(4, width, width))\n"
    )
    from camkit.zoo.model import ShapesCNN

    torch.manual_seed(0)
    reference = ShapesCNN(channels=(4, 6, 6)).eval()
    torch.save(reference.state_dict(), tmp_path / "net.pt")
    from camkit.experiment.config import ModelSpec
    from camkit.experiment.models import build_model

    spec = ModelSpec(source="python:net.py:build", weights="net.pt", kwargs={"width": 6})
    model = build_model(spec, tmp_path)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), reference(x)) and not model.training
    with pytest.raises(ConfigError, match="no callable 'nope'"):
        build_model(ModelSpec(source="python:net.py:nope"), tmp_path)


def test_torchvision_model_without_weights(tmp_path):
    from camkit.experiment.config import ModelSpec
    from camkit.experiment.models import build_model

    spec = ModelSpec(source="torchvision:resnet18", weights="none", kwargs={"num_classes": 3})
    model = build_model(spec, tmp_path)
    assert model.fc.out_features == 3 and not model.training
    with pytest.raises(ConfigError, match="torchvision has no model 'resnet19'"):
        build_model(ModelSpec(source="torchvision:resnet19"), tmp_path)


def test_experiments_lay_the_model_out_by_the_rule(small_config, monkeypatch):
    """A run's outputs do not depend on a timing: no layout is measured inside it."""
    from camkit.engine.accel import capabilities, layout
    from camkit.experiment import load_config, run

    if not capabilities("cpu").channels_last:
        pytest.skip("no channels-last convolutions here: nothing would be measured")
    monkeypatch.setattr(layout, "MEASURE", True)
    measured: list[int] = []
    monkeypatch.setattr(layout, "channels_last_faster", lambda *_: measured.append(1) or False)
    run(load_config(small_config), progress=False)
    assert measured == []
    assert layout.measuring()  # outside the run, layouts are measured again
