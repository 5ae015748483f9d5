"""report.html and its pictures, read back from a finished run: the numbers it shows are the
run's numbers, the plots are drawn from the stored curves, the pictures are the stored maps.
(The page in a real browser: tests/browser, `nox -s report`.)"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from camkit.experiment import load_config, run
from camkit.metrics import auc
from camkit.viz import colormap


def _tensor(array):
    return torch.from_numpy(array.astype(np.float64))


def _page(folder):
    return (folder / "report.html").read_text()


def _data(text):
    return json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', text).group(1)
    )


def test_browser_data_are_the_runs_numbers(finished):
    config, result = finished
    data = _data(_page(result.folder))
    assert data["methods"] == ["cam", "gradcam"] and data["metrics"] == config.metrics.compute
    assert data["lower"] == [m in ("average_drop", "deletion") for m in config.metrics.compute]
    # output.report_images = 3 of 8: the page says so
    assert [img["id"] for img in data["images"]] == ["shapes-00000", "shapes-00001", "shapes-00002"]
    assert "The first 3 of 8 images" in _page(result.folder)
    with open(result.folder / "metrics.csv", newline="") as f:
        rows = {(r["method"], int(r["index"])): r for r in csv.DictReader(f)}
    for img in data["images"]:
        for method in data["methods"]:
            row = rows[(method, img["i"])]
            assert img["correct"] == (row["predicted"] == row["label"])
            for name, value in zip(data["metrics"], img["v"][method]):
                assert value == pytest.approx(float(row[name]), abs=1e-5)


def test_metric_table_shows_intervals_best_and_chance(finished):
    config, result = finished
    text = _page(result.folder)
    summary = json.loads((result.folder / "summary.json").read_text())
    table = re.search(r'<table class="metrics">(.*?)</table>', text).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table)[1:]
    names = config.metrics.compute
    for row, method in zip(rows, ["cam", "gradcam"]):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert cells[0] == "features"  # the layer (auto for cam)
        assert cells[1] == f"{summary['seconds'][method]:.1f}"
        for name, cell in zip(names, cells[2:]):
            stat = summary["methods"][method][name]
            plain = re.sub(r"<[^>]+>", "", cell).replace("best: ", "")
            assert plain == f"{stat['mean']:.3f} [{stat['ci95'][0]:.3f}, {stat['ci95'][1]:.3f}]"
    marked = {
        (method, names[i])
        for row, method in zip(rows, ["cam", "gradcam"])
        for i, cell in enumerate(re.findall(r"<td[^>]*>", row)[2:])
        if 'class="best"' in cell
    }
    # each metric's best is marked once (ties: the first method)
    assert marked == {(m, n) for n, m in summary["best"].items()}
    chance = re.findall(
        r'<tr class="chance"><th scope="row" class="name">chance: ([a-z ]+)</th>', table
    )
    assert chance == ["centre", "random", "blurred random"]
    assert summary["layers"] == {"cam": ["features"], "gradcam": ["features"]}
    assert all(seconds > 0 for seconds in summary["seconds"].values())


def test_stored_curves_are_the_metrics_curves(finished):
    _, result = finished
    with np.load(result.folder / "maps" / "gradcam" / "shard-00000.npz") as shard:
        deletion, insertion = shard["curve_deletion"], shard["curve_insertion"]
        # 64 x 64 pixels, 512 per step: 8 steps, 9 points
        assert deletion.shape == insertion.shape == (4, 9)
        np.testing.assert_allclose(auc(_tensor(deletion)), shard["metric_deletion"], rtol=1e-5)
        np.testing.assert_allclose(auc(_tensor(insertion)), shard["metric_insertion"], rtol=1e-5)
        # deletion starts, insertion ends at the clean image
        np.testing.assert_allclose(deletion[:, 0], shard["confidence"], rtol=1e-5)
        np.testing.assert_allclose(insertion[:, -1], shard["confidence"], rtol=1e-5)


def test_curve_plot_draws_the_mean_curve(finished):
    _, result = finished
    text = _page(result.folder)
    curves = np.concatenate(
        [
            np.load(result.folder / "maps" / "cam" / f"shard-0000{i}.npz")["curve_deletion"]
            for i in (0, 1)
        ]
    )
    mean = curves.astype(np.float64).mean(0)
    section = re.search(r'<section id="curves">(.*?)</section>', text, re.S).group(1)
    first_plot = section.split("<figure>")[1]
    points = re.search(r'<polyline points="([^"]+)"[^>]*><title>cam</title>', first_plot).group(1)
    drawn = np.array([[float(v) for v in p.split(",")] for p in points.split()])
    # plot area: x from 44 to 510 px over [0, 1], y from 226 (0) up to 10 (1)
    np.testing.assert_allclose(drawn[:, 0], 44 + np.linspace(0, 1, 9) * 466, atol=0.06)
    np.testing.assert_allclose(drawn[:, 1], 10 + (1 - mean) * 216, atol=0.06)
    assert section.count("<title>chance: random</title>") == 2  # deletion and insertion


def test_pictures_and_colour_bar_follow_the_colormap(finished):
    _, result = finished
    with np.load(result.folder / "maps" / "gradcam" / "shard-00000.npz") as shard:
        stored = shard["maps"][1].astype(np.float32)
    picture = np.asarray(Image.open(result.folder / "report" / "gradcam" / "map-000001.png"))
    np.testing.assert_array_equal(picture, colormap(stored, "jet"))
    stops = re.findall(r'<stop offset="[\d.]+" stop-color="#([0-9a-f]{6})"/>', _page(result.folder))
    expected = colormap(np.linspace(0, 1, 11)[None], "jet")[0]
    assert stops == ["{:02x}{:02x}{:02x}".format(*rgb) for rgb in expected.tolist()]
    settings = re.search(r'<dl class="settings">(.*?)</dl>', _page(result.folder)).group(1)
    for shown in ("512 pixels (8 steps)", "<dd>zeros</dd>", "<dd>blur</dd>", "5 (kernel 11 × 11)"):
        assert shown in settings
    # overlays come from the run's overlay files
    assert '"overlays":"overlays"' in _page(result.folder)


def test_without_overlay_files_the_report_writes_its_own(small_config, tmp_path):
    config = load_config(
        small_config,
        overrides=[
            "output.overlays=false",
            "output.colormap=cividis",
            "metrics.compute=[deletion]",
        ],
    )
    result = run(config, progress=False)
    data = _data(_page(result.folder))
    assert data["overlays"] == "report" and len(data["images"]) == 3
    overlay = result.folder / "report" / "cam" / "000002.png"
    assert overlay.is_file() and not (result.folder / "overlays").exists()
    assert "Colormap cividis" in _page(result.folder)
    # no pointing games computed: no centre row; the random rows have deletion only
    assert "chance: centre" not in _page(result.folder)


def test_no_images_no_browser(small_config):
    result = run(load_config(small_config, overrides=["output.report_images=0"]), progress=False)
    text = _page(result.folder)
    assert "(no images: output.report_images is 0)" in text and 'id="data"' not in text
    assert not (result.folder / "report").exists()
    assert text.count("<polyline") == 2 * 4  # the curves still: 2 methods + 2 baselines, twice
