"""benchmarks/peers.py: the shims timed against the originals (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks
from benchmarks import peers


def _args(*extra: str):
    return peers.parser().parse_args(
        ["--size", "32", "--batch-sizes", "1", "--repeats", "1", "--warmup", "0", *extra]
    )


def test_peers_time_each_installed_peer(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    have = peers.available()
    if not (have["torchcam"] or have["pytorch-grad-cam"]):
        pytest.skip("neither torchcam nor pytorch-grad-cam is installed")
    out = tmp_path / "peers.json"
    assert benchmarks.main(["--peers", "--methods", "Grad-CAM", "--size", "32",
                            "--batch-sizes", "1", "--repeats", "1", "--warmup", "0",
                            "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    rows = report["results"]
    expected = {p for p in ("torchcam", "pytorch-grad-cam") if have[p]}
    assert {r["peer"] for r in rows} == expected and {r["method"] for r in rows} == {"Grad-CAM"}
    for r in rows:
        assert r["shim_over_original"] == pytest.approx(r["shim_s"] / r["original_s"])
        assert r["shim_x_bare"] == pytest.approx(r["shim_s"] / r["bare_s"])
        assert r["original_x_bare"] == pytest.approx(r["original_s"] / r["bare_s"])
    text = capsys.readouterr().out
    assert text.count("| Grad-CAM | 1 |") == len(expected)
    assert peers.DETECTOR not in text  # not asked for: neither timed nor described


def test_peers_skip_what_is_not_installed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        peers,
        "available",
        lambda: dict.fromkeys(["torchcam", "pytorch-grad-cam", "camkit-contrib"], False),
    )
    report = peers.run(_args())
    assert report["results"] == []
    assert len(report["notes"]) == 3 and all("not installed" in n for n in report["notes"])
    assert "torchcam is not installed" in peers.markdown(report)


@pytest.mark.slow
def test_peers_time_the_detector_ablation(tmp_path: Path):
    have = peers.available()
    if not (have["pytorch-grad-cam"] and have["camkit-contrib"]):
        pytest.skip("pytorch-grad-cam and camkit-contrib are needed")
    report = peers.run(_args("--methods", peers.DETECTOR, "--detector-size", "64"))
    (row,) = report["results"]
    assert row["method"] == peers.DETECTOR and row["size"] == 64 and row["batch"] == 1
    assert row["shim_over_original"] == pytest.approx(row["shim_s"] / row["original_s"])
    assert row["original_x_bare"] == pytest.approx(row["original_s"] / row["bare_s"])
    text = peers.markdown(report)
    assert f"| {peers.DETECTOR} | 1 |" in text and "64 px; its bare time is the detector's" in text
