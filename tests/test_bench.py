"""The benchmarks (``benchmarks/``, outside the installed package): the measuring helpers
against hand-computed values, and a run of ``--quick`` on a tiny model (no timing is
asserted anywhere)."""

from __future__ import annotations

import json
import math
import os
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import benchmarks
import camkit
from benchmarks import harness, scenarios

SCORE_PLUGIN = """
import torch

import camkit


class Config(camkit.MethodConfig):
    num_samples: int = 3


class ScoreLike(camkit.Method):
    name = "bench-scorelike"
    Config = Config
    many_forwards = True

    def weights(self, ctx):
        masks = camkit.minmax_normalize(ctx.activations).repeat(1, self.config.num_samples, 1, 1)
        scores = ctx.score(masks).unflatten(1, (self.config.num_samples, -1)).mean(1)
        return torch.softmax(scores - ctx.baseline_scores[:, None], dim=1)


class Plugin:
    @camkit.hookimpl
    def camkit_methods(self):
        return [ScoreLike]


plugin = Plugin()
"""


@pytest.fixture
def score_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Score-family-like method in an importable module, for ``--plugin``; unregistered
    afterwards. Subprocesses find it through PYTHONPATH."""
    (tmp_path / "bench_scorelike.py").write_text(textwrap.dedent(SCORE_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    root = Path(__file__).parents[1]  # where `python -m benchmarks` finds the package
    paths = [str(tmp_path), str(root), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    yield "bench_scorelike:plugin"
    camkit.unregister_plugin("bench_scorelike:plugin")


def test_pearson_and_top_overlap_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert harness.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert harness.pearson(a, -a) == pytest.approx(-1.0)
    b = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    # a - mean = [-1.5, -.5, .5, 1.5], b - mean = [-1, 0, -1, 2]: dot 4, norms sqrt(5), sqrt(6)
    assert harness.pearson(a, b) == pytest.approx(4 / math.sqrt(30))
    x = torch.arange(10.0)
    y = torch.tensor([9.0, 8, 0, 1, 2, 3, 4, 5, 6, 7])
    # top 20% of x: pixels {8, 9}; of y: pixels {0, 1}; then {8, 9} and {9, 0}: half shared.
    assert harness.top_overlap(x, y) == 0.0
    y[0], y[9] = 10.0, 11.0
    assert harness.top_overlap(x, y) == 0.5


def test_interleaved_alternates_the_order() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = harness.interleaved(fns, repeats=3, warmup=1)
    assert calls == list("abc" + "abc" + "cba" + "abc")
    assert all(len(t.wall) == 3 and len(t.cpu) == 3 for t in timings.values())


def test_interleaved_repeats_short_functions_to_fill_the_time() -> None:
    # A round of two 2 ms sleeps takes at least 4 ms: filling 0.1 s takes at most 25 rounds,
    # and never fewer than the 3 asked for; with 10 s to fill, the cap of 8 decides.
    fns = {name: (lambda: time.sleep(0.002)) for name in "ab"}
    runs = len(harness.interleaved(fns, repeats=3, warmup=1, seconds=0.1, most=100)["a"].wall)
    assert 3 <= runs <= 25
    assert len(harness.interleaved(fns, repeats=3, warmup=1, seconds=10, most=8)["a"].wall) == 8
    assert len(harness.interleaved(fns, repeats=3, warmup=1)["a"].wall) == 3


def test_forward_sizes_and_rows() -> None:
    model = nn.Linear(3, 2)
    sizes = harness.forward_sizes(model, lambda: [model(torch.zeros(n, 3)) for n in (4, 1, 7)])
    assert sizes == [4, 1, 7]
    assert not model._forward_pre_hooks
    x = torch.arange(6.0).reshape(2, 3)
    assert harness.rows_of(x, 5).tolist() == [x[0].tolist(), x[1].tolist()] * 2 + [x[0].tolist()]


def test_forward_backward_is_the_gradient_at_the_layer() -> None:
    torch.manual_seed(0)
    model = scenarios.build_model("tiny")
    x = torch.randn(2, 3, 8, 8)
    grad = harness.forward_backward(model, model.relu2, x)
    # By hand: the head is avgpool + linear, so d(top score)/d(relu2) is the top class's
    # weight row spread evenly over the 4 x 4 positions.
    top = model(x).argmax(1)
    expected = model.fc.weight[top][:, :, None, None].expand(2, 16, 4, 4) / 16
    torch.testing.assert_close(grad, expected)
    assert not model.relu2._forward_hooks


def test_backward_count_sees_the_passes_a_method_makes() -> None:
    grad = torch.autograd.grad
    torch.manual_seed(0)
    model = scenarios.build_model("tiny")
    x = torch.randn(2, 3, 8, 8)
    count = harness.backward_count
    assert count(model, lambda: harness.forward_backward(model, model.relu2, x)) == 1
    assert count(model, lambda: harness.bare_forward(model, x)) == 0
    smooth = camkit.create("smoothgradcampp", model, "relu2", num_samples=3, batch_size=4, seed=0)
    # 6 noisy rows in chunks of 4: two backward passes, none for the clean input.
    assert count(model, lambda: smooth(x)) == 2
    assert torch.autograd.grad is grad  # nothing patched
    assert not model._backward_pre_hooks  # the counting hook is gone


def test_method_kinds_follow_what_the_methods_declare() -> None:
    assert scenarios.method_kind("cam") == "activation"
    assert scenarios.method_kind("gradcam") == "gradient"
    assert scenarios.method_kind("scorecam") == "perturbation"
    assert scenarios.method_kind("iscam") == "perturbation"


def test_benchmarks_are_not_installed_with_camkit() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["tool"]["setuptools"]["packages"]["find"]["include"] == ["camkit*"]
    assert not hasattr(camkit, "bench")


def test_noise_draws_only_for_noisy_gradient_methods() -> None:
    x = torch.zeros(2, 3, 8, 8)
    draw = scenarios.noise_draws("smoothgradcampp", {"num_samples": 3}, x)
    assert draw is not None and draw().shape == (3, 2, 3, 8, 8)
    assert scenarios.noise_draws("gradcam", {}, x) is None
    assert scenarios.noise_draws("sscam", {"num_samples": 3}, x) is None  # a perturbation method


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS"
)
def test_peak_rss_counts_what_a_call_touches() -> None:
    peak, how = harness.peak_rss_during(lambda: torch.ones(16 * 2**20).sum())  # 64 MiB
    assert 60 <= peak < 200, how


def test_quick_run(tmp_path: Path, score_plugin: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    methods = "cam,gradcam,bench-scorelike"
    args = ["--quick", "--no-memory", "--plugin", score_plugin, "--methods", methods]
    args += ["--num-samples", "2", "--first-call", "", "--tasks", "", "--registered", ""]
    assert benchmarks.main([*args, "--output", str(out), "--markdown", str(md)]) == 0
    report = json.loads(out.read_text())
    assert {(r["method"], r["batch"]) for r in report["latency"]} == {
        ("cam", 1),
        ("cam", 4),
        ("gradcam", 1),
        ("gradcam", 4),
    }
    assert [(r["method"], r["batch"]) for r in report["throughput"]] == [
        ("cam", 8),
        ("gradcam", 8),
    ]
    assert all(
        r["ratio"] > 0 and r["forwards"] == 1 for r in report["latency"] + report["throughput"]
    )
    # The tiny model has no grouped convolutions: channels-last from batch 2 on, and then a
    # second baseline with the input laid out that way.
    for r in report["latency"] + report["throughput"]:
        assert r["channels_last"] == (r["batch"] > 1)
        assert r["layout_ratio"] > 0
        assert (r["layout_model_ms"] == r["model_ms"]) == (r["batch"] == 1)
    (score,) = report["score"]
    # relu2 of the tiny model has 16 channels; the bench sets num_samples (here 2), whose
    # identical copies of each mask the scorer forwards once.
    assert score["channels"] == 16 and score["samples"] == 2 and score["nominal_forwards"] == 32
    assert score["forwarded"] <= 16 and score["batch_size"] == 32
    for precision in ("bf16", "auto"):
        assert -1 <= score[precision]["pearson"] <= 1
        assert 0 <= score[precision]["top20_overlap"] <= 1
        assert score[precision]["mode"] in {"bf16-copy", "int8-copy", "fp32-copy", "model"}
    assert [r["batch_size"] for r in report["chunk_sizes"]] == [4, 8]
    assert all(r["auto_ms_per_image"] > 0 for r in report["chunk_sizes"])
    # The machine's capabilities, as camkit found them, are in the report.
    caps = camkit.engine.accel.capabilities()
    assert report["machine"]["capabilities"] == json.loads(json.dumps(caps.as_dict()))
    assert caps.summary() in md.read_text()
    text = capsys.readouterr().out
    assert text.strip() == md.read_text().strip()
    assert "| bench-scorelike | tiny | 16 x 2 |" in text
    assert "Forwarded below C x N" in text
    assert "## Activation and gradient methods" in text and "## Many images" in text
    assert "| cam | tiny | 1 | as given |" in text and "| cam | tiny | 4 | nhwc |" in text


def test_quick_run_of_first_calls_tasks_and_methods_by_registered_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--no-memory", "--methods", "cam", "--batch-sizes", "1"]
    args += ["--throughput-batch", "0", "--chunk-sizes", "", "--precisions", "auto"]
    args += ["--registered", "fem,legrad,fullgrad", "--output", str(out)]
    assert benchmarks.main(args) == 0
    report = json.loads(out.read_text())
    # A fresh tiny model's Score-CAM is too small a job for a calibration: none is made,
    # and the maps are exact mode's.
    (first,) = report["first_call"]
    assert first["spec"] == "tiny:scorecam:relu2:1" and not first["int8"]
    assert first["pearson"] > 0.9999 and first["fp32_s"] > 0 and first["auto_s"] > 0
    # Quick mode keeps the segmenter (the detector's forwards take 0.1 s each).
    rows = {(r["task"], r["method"]): r for r in report["tasks"]}
    assert set(rows) == {("segmentation", "gradcam"), ("segmentation", "scorecam")}
    assert rows["segmentation", "gradcam"]["forwards"] == 1
    assert rows["segmentation", "scorecam"]["forwards"] == 1 + 40  # backbone.4: 40 channels
    assert 1 < rows["segmentation", "scorecam"]["forwarded"] <= 1 + 40
    assert all(r["ratio"] > 0 for r in rows.values())
    registered = set(camkit.list_methods())
    for r in report["registered"]:
        assert (r["status"] == "ran") == (r["method"] in registered), r
        assert r["status"] in ("ran", "not registered")  # fem, legrad and fullgrad need no config
    assert [r["method"] for r in report["registered"]] == ["fem", "legrad", "fullgrad"]
    text = capsys.readouterr().out
    assert "## First call on a fresh model" in text and "## Detection and segmentation" in text
    assert "## Methods by registered name" in text
    if "legrad" not in registered:
        assert "| legrad | | | | | | not registered |" in text


def test_an_unknown_registered_name_is_refused() -> None:
    with pytest.raises(SystemExit, match="no entry 'gradcamm'"):
        benchmarks.main(["--quick", "--no-memory", "--methods", "cam", "--registered", "gradcamm"])


def test_the_detector_target_baseline_is_the_gradient_of_the_target() -> None:
    from benchmarks import coverage

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3)).eval()
    x = torch.rand(2, 3, 6, 6)
    model(x)

    def target(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return scores[:, 1]

    grad = coverage.target_forward_backward(model, model[1], x, target)
    # d(score 1)/d(ReLU output) is the linear layer's row 1, for each image.
    expected = model[3].weight[1].reshape(4, 4, 4).expand(2, -1, -1, -1)
    torch.testing.assert_close(grad, expected)
    gin = coverage.forward_backward_input(model, x)
    assert gin.shape == x.shape and gin.abs().sum() > 0


@pytest.mark.slow
def test_quick_run_with_memory_probes(tmp_path: Path, score_plugin: str) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--plugin", score_plugin, "--methods", "bench-scorelike"]
    assert benchmarks.main([*args, "--chunk-sizes", "", "--output", str(out)]) == 0
    (score,) = json.loads(out.read_text())["score"]
    for key in ("peak_mib", "forwards_peak_mib"):
        assert isinstance(score[key], float) and score[key] >= 0
