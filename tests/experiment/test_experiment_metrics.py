"""ROAD, the CAM-multiplied confidence change, ARCC and the sanity checks in ``camkit run``:
selected from a config, stored per shard, and equal to a direct call of the
:mod:`camkit.metrics` function on the same image."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import camkit
from camkit import zoo
from camkit.errors import ConfigError
from camkit.experiment import baselines, load_config, run
from camkit.experiment.compute import noise_generator
from camkit.experiment.config import DEFAULT_METRICS, METRICS, MetricsSpec
from camkit.experiment.data import open_source
from camkit.experiment.merging import load_shards
from camkit.experiment.plan import plan_shards
from camkit.experiment.report import LABELS
from camkit.metrics import (
    arcc,
    cam_mult_confidence_change,
    model_randomization,
    road,
    spearman,
    ssim,
)
from camkit.metrics.imputation import DEFAULT_REMOVED

# The example sets Eigen-CAM, which ignores the head, beside two gradient methods.
pytest.importorskip(
    "camkit_contrib",
    reason="examples/sanity.toml uses eigencam: pip install ./plugins/camkit-contrib",
)

EXAMPLE = Path(__file__).parents[2] / "examples" / "sanity.toml"
NEW = [name for name in METRICS if name not in DEFAULT_METRICS]
# 3 images in shards of 2: image 2 is alone in its shard, images 0 and 1 share one
TINY = [
    "data.count=3",
    "batch_size=2",
    f"metrics.compute={json.dumps(NEW)}",
    "metrics.road_removed=[0.3, 0.7]",
    "metrics.arcc_removed=[0.5]",
    "output.map_dtype=float32",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """examples/sanity.toml, every new metric, 3 images: (config, folder)."""
    out = tmp_path_factory.mktemp("sanity") / "out"
    config = load_config(EXAMPLE, overrides=TINY, output=out)
    run(config, progress=False)
    return config, out


def _stored(config, folder: Path, method: str) -> dict[str, np.ndarray]:
    return load_shards(folder, method, plan_shards(3, config.batch_size))


def _direct_inputs(config):
    """The trained model behind its normalization, and the [0, 1] images, as the run has them."""
    model = zoo.load_model("shapes-cnn")
    source = open_source(config.data, config.base_dir, config.seed)
    images = source.batch(range(len(source))).images
    return model, images


def test_defaults_are_the_six_cheap_metrics():
    assert MetricsSpec().compute == list(DEFAULT_METRICS)
    assert len(DEFAULT_METRICS) == 6 and "road_morf" not in DEFAULT_METRICS
    assert set(LABELS) == set(METRICS)  # every metric has a readable name in the report
    assert MetricsSpec().road_removed == list(DEFAULT_REMOVED)  # the library's default


def test_new_metrics_are_in_every_output(tiny):
    config, out = tiny
    summary = json.loads((out / "summary.json").read_text())
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[7:] == NEW
    for method in ("gradcam", "gradcampp", "eigencam"):
        stats = summary["methods"][method]
        assert set(stats) == set(NEW)
        for name in NEW:
            values = _stored(config, out, method)[f"metric_{name}"]
            kept = values[~np.isnan(values)]
            assert stats[name]["count"] == kept.size
            if kept.size:
                assert stats[name]["mean"] == pytest.approx(kept.mean(), abs=1e-12)
                low, high = stats[name]["ci95"]
                assert low <= stats[name]["mean"] <= high
    for name in ("random", "blurred_random"):
        assert set(summary["baselines"][name]) == set(NEW)
        assert summary["baselines"][name]["arcc_coherency"]["count"] == 3
    page = (out / "report.html").read_text()
    assert 'href="#sanity"' in page and "sanity, independent: SSIM" in page
    first_step = summary["sanity_steps"]["gradcampp"]["sanity_cascading_ssim"][0]
    assert f"<td>{first_step:.3f}</td>" in page
    assert "<dt>ROAD shares imputed</dt><dd>0.3, 0.7</dd>" in page


def test_best_marks_the_lowest_similarity(tiny):
    _, out = tiny
    summary = json.loads((out / "summary.json").read_text())
    for name in ("sanity_cascading_ssim", "road_morf", "arcc_complexity"):
        means = {m: s[name]["mean"] for m, s in summary["methods"].items()}
        assert summary["best"][name] == min(means, key=means.__getitem__)
    means = {m: s["road_lerf"]["mean"] for m, s in summary["methods"].items()}
    assert summary["best"]["road_lerf"] == max(means, key=means.__getitem__)


def test_road_and_cam_mult_equal_direct_calls(tiny):
    config, out = tiny
    model, images = _direct_inputs(config)
    spec = config.metrics
    for method in ("gradcam", "eigencam"):
        stored = _stored(config, out, method)
        maps = torch.from_numpy(
            np.concatenate([np.load(p)["maps"] for p in sorted((out / "maps" / method).iterdir())])
        )
        for i in range(3):
            x, m = images[i : i + 1], maps[i : i + 1]
            t = torch.tensor([int(stored["target"][i])])
            direct = {}
            for order in ("morf", "lerf"):
                value = road(
                    model, x, m, t, order=order, removed=spec.road_removed,
                    noise=spec.road_noise, generator=noise_generator(0, i, f"road_{order}"),
                )  # fmt: skip
                direct[order] = float(value[0])
            assert stored["metric_road_morf"][i] == pytest.approx(direct["morf"], abs=1e-6)
            assert stored["metric_road_lerf"][i] == pytest.approx(direct["lerf"], abs=1e-6)
            combined = (direct["lerf"] - direct["morf"]) / 2
            assert stored["metric_road_combined"][i] == pytest.approx(combined, abs=1e-6)
            change = float(cam_mult_confidence_change(model, x, m, t)[0])
            assert stored["metric_cam_mult_confidence_change"][i] == pytest.approx(change, abs=1e-6)


def test_arcc_equals_a_direct_call(tiny):
    config, out = tiny
    model, images = _direct_inputs(config)
    stored = _stored(config, out, "gradcam")
    maps = torch.from_numpy(
        np.concatenate([np.load(p)["maps"] for p in sorted((out / "maps" / "gradcam").iterdir())])
    )
    cam = camkit.create("gradcam", model, "features", progress=False)
    for i in range(3):
        t = torch.tensor([int(stored["target"][i])])
        score = arcc(
            model, cam, images[i : i + 1], maps[i : i + 1], t, removed=[0.5],
            noise=config.metrics.road_noise, generator=noise_generator(0, i, "arcc"),
        )  # fmt: skip
        for part, value in zip(("arcc", "coherency", "complexity", "confidence"), score):
            key = "metric_arcc" if part == "arcc" else f"metric_arcc_{part}"
            assert stored[key][i] == pytest.approx(float(value[0]), abs=1e-5), part


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_sanity_checks_equal_direct_calls(tiny, mode):
    config, out = tiny
    model, images = _direct_inputs(config)
    layers = ["fc", "features", "block", "stem"]
    for method in ("gradcam", "eigencam"):
        stored = _stored(config, out, method)
        assert stored["sanity_layers"][:4].tolist() == layers
        for i in range(3):
            x, t = images[i : i + 1], torch.tensor([int(stored["target"][i])])

            def maps_of(m, method=method, x=x, t=t):
                return camkit.create(method, m, "features")(x, t).maps

            check = model_randomization(model, maps_of, mode=mode, layers=layers, seed=0)
            for similarity in ("spearman", "ssim"):
                name = f"sanity_{mode}_{similarity}"
                steps = getattr(check, similarity)[:, 0].double().numpy()
                np.testing.assert_allclose(stored[f"steps_{name}"][i], steps, atol=1e-4)
                np.testing.assert_allclose(stored[f"metric_{name}"][i], steps[-1], atol=1e-4)
    # Eigen-CAM does not read the head: re-drawing `fc` (step 1) leaves its maps as they were
    eigen = _stored(config, out, "eigencam")[f"steps_sanity_{mode}_ssim"]
    np.testing.assert_allclose(eigen[:, 0], 1.0, atol=1e-6)
    assert (_stored(config, out, "gradcam")[f"steps_sanity_{mode}_ssim"][:, 0] < 0.99).all()


def test_sanity_steps_are_summarized_per_layer(tiny):
    config, out = tiny
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["sanity_steps"]["gradcampp"]
    assert steps["layers"] == ["fc", "features", "block", "stem"]
    values = _stored(config, out, "gradcampp")["steps_sanity_cascading_ssim"]
    np.testing.assert_allclose(steps["sanity_cascading_ssim"], values.mean(0), atol=1e-12)


def test_baseline_chance_levels_are_unrelated_draws(tiny):
    config, out = tiny
    stored = baselines.load(out, plan_shards(3, config.batch_size))["random"]
    first = baselines.random_maps("random", [0, 1, 2], (64, 64), seed=0)
    other = baselines.random_maps("random", [0, 1, 2], (64, 64), seed=0, draw=2)
    np.testing.assert_allclose(stored["metric_sanity_cascading_spearman"], spearman(first, other))
    np.testing.assert_allclose(stored["metric_sanity_independent_ssim"], ssim(first, other))
    again = baselines.random_maps("random", [0, 1, 2], (64, 64), seed=0, draw=1)
    assert not torch.equal(first, again)
    # complexity of uniform noise: its mean, about 1/2
    np.testing.assert_allclose(stored["metric_arcc_complexity"], first.mean((1, 2)), atol=1e-6)
    assert "steps_sanity_cascading_ssim" not in stored


def test_a_recomputed_shard_gives_the_same_values(tiny, tmp_path):
    config, out = tiny
    again = load_config(EXAMPLE, overrides=[*TINY, "batch_size=3"], output=tmp_path / "o")
    run(again, progress=False)
    for method in ("gradcam",):
        before = _stored(config, out, method)
        after = load_shards(tmp_path / "o", method, plan_shards(3, 3))
        for name in NEW:
            np.testing.assert_allclose(
                after[f"metric_{name}"], before[f"metric_{name}"], atol=1e-5, err_msg=name
            )


def test_unknown_sanity_layer_is_a_config_error(tmp_path):
    config = load_config(
        EXAMPLE,
        overrides=["data.count=1", 'metrics.sanity_layers=["fc", "feature"]'],
        output=tmp_path / "o",
    )
    with pytest.raises(ConfigError, match=r"sanity.toml: metrics.sanity_layers: .*'feature'") as e:
        run(config, progress=False)
    assert "did you mean 'features'" in str(e.value).lower()
    assert not (tmp_path / "o").exists()


def test_options_of_metrics_not_computed_leave_the_fingerprint():
    quickstart = EXAMPLE.parent / "quickstart.toml"
    base = load_config(quickstart)
    assert not {"road_removed", "sanity_seed"} & set(base.comparable()["metrics"])
    assert load_config(quickstart, overrides=["metrics.road_noise=0.5"]).fingerprint() == (
        base.fingerprint()
    )
    sanity = load_config(EXAMPLE)
    for change in ("metrics.road_noise=0.5", "metrics.sanity_seed=1", "metrics.arcc_removed=[0.5]"):
        assert load_config(EXAMPLE, overrides=[change]).fingerprint() != sanity.fingerprint()
    # the example computes no LeRF/MoRF alone but road_combined, which reads road_removed
    assert load_config(EXAMPLE, overrides=["metrics.road_removed=[0.5]"]).fingerprint() != (
        sanity.fingerprint()
    )


@pytest.mark.parametrize(
    "override, key",
    [
        ("metrics.road_removed=[0.5, 1.0]", "metrics.road_removed[1]"),
        ("metrics.arcc_removed=[]", "metrics.arcc_removed"),
        ("metrics.road_noise=-0.1", "metrics.road_noise"),
        ("metrics.sanity_seed=true", "metrics.sanity_seed"),
        ('metrics.compute=["sanity_cascading"]', "metrics.compute[0]"),
        ('metrics.compute=["arcc", "arcc"]', "metrics.compute"),
    ],
)
def test_bad_metric_options_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"{EXAMPLE.name}: {key}: ")):
        load_config(EXAMPLE, overrides=[override])


@pytest.mark.slow
def test_the_example_runs_as_shipped(tmp_path):
    config = load_config(EXAMPLE, output=tmp_path / "o")
    result = run(config, progress=False)
    assert result.images == 8
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert set(summary["sanity_steps"]) == {"gradcam", "gradcampp", "eigencam"}
    assert summary["sanity_steps"]["eigencam"]["sanity_cascading_ssim"][0] == pytest.approx(1.0)
