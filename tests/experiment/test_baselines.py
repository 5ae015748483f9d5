"""Random-map chance levels: the maps against a direct construction, their metrics against
the metric functions on the same maps, resume, and the switch that turns them off."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from camkit import zoo
from camkit.experiment import load_config, run
from camkit.experiment.baselines import random_maps
from camkit.experiment.stats import describe
from camkit.metrics import deletion, insertion


def _blurred_reference(noise: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with edge replication by a direct 2-D sum, then min-max normalized."""
    radius = math.ceil(2 * sigma)
    offsets = np.arange(-radius, radius + 1)
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel = np.outer(g, g) / g.sum() ** 2
    h, w = noise.shape
    out = np.zeros_like(noise)
    for r in range(h):
        for c in range(w):
            for i, dr in enumerate(offsets):
                for j, dc in enumerate(offsets):
                    rr, cc = min(max(r + dr, 0), h - 1), min(max(c + dc, 0), w - 1)
                    out[r, c] += kernel[i, j] * noise[rr, cc]
    return (out - out.min()) / (out.max() - out.min())


def test_random_maps_are_per_image_streams():
    maps = random_maps("random", [3, 7], (16, 16), seed=2)
    for row, index in enumerate([3, 7]):
        expected = np.random.default_rng([2, index, 0]).random((16, 16))
        np.testing.assert_allclose(maps[row].numpy(), expected, rtol=1e-6)
    # image 7's map does not depend on which images share its batch
    assert torch.equal(random_maps("random", [7], (16, 16), seed=2)[0], maps[1])
    assert not torch.equal(random_maps("random", [7], (16, 16), seed=3)[0], maps[1])


def test_blurred_random_maps_match_a_direct_blur():
    maps = random_maps("blurred_random", [0, 4], (16, 16), seed=1)
    for row, index in enumerate([0, 4]):
        noise = np.random.default_rng([1, index, 1]).random((16, 16))
        np.testing.assert_allclose(maps[row].numpy(), _blurred_reference(noise, 1.0), atol=1e-5)


def test_baseline_metrics_are_the_metrics_of_the_random_maps(finished):
    _, result = finished
    summary = json.loads((result.folder / "summary.json").read_text())
    images, _, boxes = zoo.shapes.generate(8, seed=0)
    model = zoo.load_model("shapes-cnn").eval()
    with torch.inference_mode():
        probs = model(images).softmax(1)
    targets = probs.argmax(1)
    for name in ("random", "blurred_random"):
        maps = random_maps(name, list(range(8)), (64, 64), seed=0)
        with torch.inference_mode():
            masked = model(images * maps[:, None]).softmax(1)
        y, o = probs[torch.arange(8), targets], masked[torch.arange(8), targets]
        drop = (torch.clamp(y - o, min=0) / y).double().numpy()
        energy = np.array(
            [
                maps[i, y0:y1, x0:x1].sum() / maps[i].sum()
                for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())
            ]
        )
        expected = {
            "average_drop": drop,
            "increase_in_confidence": (o > y).double().numpy(),
            "deletion": deletion(model, images, maps, targets, step=512).double().numpy(),
            "insertion": insertion(model, images, maps, targets, step=512).double().numpy(),
            "energy_pointing_game": energy,
        }
        for metric, values in expected.items():
            got = summary["baselines"][name][metric]
            want = describe(values, seed=0)
            assert got["count"] == 8 and got["mean"] == pytest.approx(
                want["mean"], rel=1e-4, abs=1e-6
            )
            assert got["ci95"] == pytest.approx(want["ci95"], rel=1e-4, abs=1e-6)
        with np.load(result.folder / "baselines" / name / "shard-00001.npz") as shard:
            assert shard["index"].tolist() == [4, 5, 6, 7]
            # the stored curve ends where the metric's curve ends: the substrate's score
            assert shard["curve_deletion"].shape == (4, 9)


def test_baselines_resume_and_can_be_turned_off(small_config, tmp_path, monkeypatch):
    config = load_config(small_config)
    run(config, progress=False)
    folder = config.output.folder
    lost = tmp_path / "out" / "baselines" / "blurred_random" / "shard-00001.npz"
    kept = tmp_path / "out" / "baselines" / "random" / "shard-00000.npz"
    before = lost.read_bytes()
    kept_time = kept.stat().st_mtime_ns
    lost.unlink()
    run(config, progress=False)
    assert lost.read_bytes() == before and kept.stat().st_mtime_ns == kept_time
    off = load_config(small_config, overrides=["metrics.baselines=false"], output=f"{folder}-off")
    run(off, progress=False)
    summary = json.loads((tmp_path / "out-off" / "summary.json").read_text())
    assert list(summary["baselines"]) == ["centre"]
    assert not (tmp_path / "out-off" / "baselines").exists()


@pytest.mark.parametrize("damage", ["truncated", "changed"])
def test_a_damaged_baseline_shard_is_computed_again(finished, small_config, damage, capsys):
    _, complete = finished
    config = load_config(small_config)
    run(config, progress=False)
    shard = Path(config.output.folder) / "baselines" / "random" / "shard-00001.npz"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    else:  # content altered, checksum kept
        with np.load(shard) as data:
            arrays = {key: data[key] for key in data.files}
        arrays["metric_deletion"] = arrays["metric_deletion"] + 0.5
        np.savez(shard, **arrays)
    capsys.readouterr()
    run(config, progress=False)
    assert f"{shard} is damaged" in capsys.readouterr().err
    summary = json.loads((Path(config.output.folder) / "summary.json").read_text())
    expected = json.loads((complete.folder / "summary.json").read_text())
    assert summary["baselines"] == expected["baselines"]
