"""The output folder: ownership, the lock, integrity of stored shards, and the data."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import camkit
from camkit import zoo
from camkit.errors import ConfigError, DataError, LockError, OutputFolderError
from camkit.experiment import load_config, run
from camkit.experiment.data import read_image
from camkit.experiment.merging import metrics_csv

FILES = """
batch_size = 2

[data]
source = {source}
image_size = 32
{data}

[[methods]]
name = "gradcam"

[metrics]
compute = ["average_drop"]

[output]
folder = "{folder}"
overlays = false
report_images = 2
"""


def _images(folder: Path, count: int, seed: int = 9, start: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images, _, _ = zoo.shapes.generate(count, seed=seed)
    for i, image in enumerate(images):
        camkit.viz.to_pil(image).save(folder / f"img{start + i}.png")


def _config(tmp_path: Path, source: str = "data", out: str = "out", data: str = "") -> Path:
    path = tmp_path / "exp.toml"
    folder = (tmp_path / out).as_posix()
    path.write_text(FILES.format(source=f'"{source}"', folder=folder, data=data))
    return path


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- ownership -------------------------------------------------------------------------------


def test_a_users_files_survive_runs_and_overwrite(small_config, tmp_path):
    out = tmp_path / "out"
    run(load_config(small_config), progress=False)
    mine = [
        out / "notes" / ".draft.tmp",
        out / "maps" / "cam" / ".mine.tmp",
        out / "maps" / "cam" / "notes.txt",
        out / "overlays" / "cam" / "000000.png.bak",
        out / ".other.tmp",
        out / "report" / "notes.png",
        out / "report" / "gradcam" / "mine.png",
        out / "baselines" / "random" / "notes.txt",
    ]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    # a temporary file camkit left behind when killed is removed
    stale = out / "maps" / "cam" / ".shard-00000.npz.abc123xy.tmp"
    stale.write_bytes(b"half")
    run(load_config(small_config), progress=False)
    assert not stale.exists()
    assert (out / "report" / "gradcam" / "map-000000.png").is_file()
    changed = load_config(
        small_config, overrides=["methods[1].id=second", "metrics.baselines=false"]
    )
    run(changed, overwrite=True, progress=False)
    assert all(path.read_text() == "mine" for path in mine)
    # the old method's results are gone, except the user's files among them
    assert sorted(p.name for p in (out / "maps" / "gradcam").glob("*")) == []
    assert not (out / "overlays" / "gradcam").exists()
    assert [p.name for p in (out / "report" / "gradcam").iterdir()] == ["mine.png"]
    assert (out / "report" / "second" / "map-000000.png").is_file()
    # so are the baselines of the earlier run, which this one does not compute
    assert [p.name for p in (out / "baselines" / "random").iterdir()] == ["notes.txt"]
    assert not (out / "baselines" / "blurred_random").exists()
    assert (out / "maps" / "second" / "shard-00001.npz").is_file()
    assert sorted(p.name for p in (out / "maps" / "cam").iterdir()) == [
        ".mine.tmp", "notes.txt", "shard-00000.npz", "shard-00001.npz",
    ]  # fmt: skip


def test_overwrite_refuses_a_maps_link(small_config, tmp_path):
    run(load_config(small_config), progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    maps = tmp_path / "out" / "maps"
    maps.rename(tmp_path / "old-maps")
    maps.symlink_to(elsewhere)
    with pytest.raises(OutputFolderError, match="maps is a symbolic link"):
        run(load_config(small_config), overwrite=True, progress=False)
    assert (elsewhere / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_an_output_path_that_is_a_file(small_config, tmp_path, where):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "out"
    with pytest.raises(OutputFolderError, match=r"f is a file, not a folder"):
        run(load_config(small_config, output=out), progress=False)
    assert (tmp_path / "f").read_text() == "x"


# -- the lock --------------------------------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from camkit.experiment.folder import FolderLock
lock = FolderLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_in_a_locked_folder_is_refused_and_a_dead_holder_frees_it(
    small_config, tmp_path
):
    out = tmp_path / "out"
    (out / ".camkit").mkdir(parents=True)
    (out / ".camkit" / "owner.json").write_text("{}")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match=rf"in use by another camkit run \(pid {holder.pid} "):
            run(load_config(small_config), progress=False)
        assert not (out / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up; its lock file remains but holds nothing
    assert (out / ".camkit" / "lock").read_text().startswith(f'{{"pid": {holder.pid}')
    result = run(load_config(small_config), progress=False)
    assert result.computed == 4


# -- integrity -------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "changed", "short"])
def test_a_damaged_shard_is_computed_again(finished, small_config, tmp_path, damage, capsys):
    _, complete = finished
    config = load_config(small_config)
    run(config, progress=False)
    shard = tmp_path / "out" / "maps" / "gradcam" / "shard-00001.npz"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:-200])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:
        with np.load(shard) as data:
            arrays = {key: data[key] for key in data.files}
        if damage == "changed":  # content altered, checksum kept
            arrays["confidence"] = arrays["confidence"] + 0.5
        else:  # consistent checksum, one image short
            arrays = {k: v[1:] if k in ("index", "id", "maps") else v for k, v in arrays.items()}
            arrays.pop("sha256")
            from camkit.experiment import files

            files.write_npz(shard, arrays)
            assert files.read_npz(shard)  # the checksum alone would accept it
        if damage == "changed":
            np.savez(shard, **arrays)
    capsys.readouterr()
    result = run(config, progress=False)
    assert (result.computed, result.skipped) == (1, 3)
    assert f"{shard} is damaged" in capsys.readouterr().err
    expected = (complete.folder / "metrics.csv").read_bytes()
    assert (tmp_path / "out" / "metrics.csv").read_bytes() == expected


def test_changed_data_is_never_mixed_with_old_results(tmp_path):
    _images(tmp_path / "data", 4)
    path = _config(tmp_path)
    run(load_config(path), progress=False)
    _images(tmp_path / "data", 2, seed=5, start=4)
    with pytest.raises(ConfigError, match=r"other data.*4 images then, 6 now"):
        run(load_config(path), progress=False)
    (tmp_path / "data" / "img4.png").unlink()
    (tmp_path / "data" / "img5.png").unlink()
    # touching a file is a change too
    os.utime(tmp_path / "data" / "img0.png", ns=(1, 1))
    with pytest.raises(ConfigError, match="other data"):
        run(load_config(path), progress=False)
    result = run(load_config(path), overwrite=True, progress=False)
    assert result.computed == 2 and len(_rows(result.folder)) == 4


def test_the_output_folder_is_not_its_own_data(tmp_path):
    _images(tmp_path, 3)
    path = _config(tmp_path, source=".", data="", out="out")
    text = path.read_text().replace("overlays = false", "overlays = true")
    path.write_text(text)
    for _ in range(2):
        result = run(load_config(path), overwrite=True, progress=False)
        assert result.images == 3
    assert len(list((tmp_path / "out" / "overlays" / "gradcam").iterdir())) == 3


# -- the data --------------------------------------------------------------------------------


def test_a_bad_file_stops_the_run_naming_it_or_is_skipped_and_listed(tmp_path):
    _images(tmp_path / "data", 3)
    (tmp_path / "data" / "img1.png").write_bytes(b"\x89PNG broken")
    path = _config(tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*img1\.png.*on_error"):
        run(load_config(path), progress=False)
    # the policy changes no computed result: the stopped run resumes under "skip"
    result = run(load_config(path, overrides=["data.on_error=skip"]), progress=False)
    assert [r["image"] for r in _rows(result.folder)] == ["img0.png", "img2.png"]
    summary = json.loads((result.folder / "summary.json").read_text())
    assert summary["images"] == 2
    assert [(s["index"], s["image"]) for s in summary["skipped"]] == [(1, "img1.png")]
    assert "UnidentifiedImageError" in summary["skipped"][0]["reason"]
    # the report lists it too, and shows the other images under their own numbers
    text = (result.folder / "report.html").read_text()
    assert re.search(r"1 image could not be read.*img1\.png.*UnidentifiedImageError", text, re.S)
    data = json.loads(
        re.search(r'<script type="application/json" id="data">(.*?)</script>', text)[1]
    )
    assert [(i["i"], i["id"]) for i in data["images"]] == [(0, "img0.png"), (2, "img2.png")]
    inputs = sorted(p.name for p in (result.folder / "report" / "_input").iterdir())
    assert inputs == ["000000.png", "000002.png"]
    expected = read_image(tmp_path / "data" / "img2.png", (32, 32)).transpose(1, 2, 0) * 255
    shown = np.asarray(Image.open(result.folder / "report" / "_input" / "000002.png"))
    assert np.abs(shown - expected).max() <= 1


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    grey = np.full((16, 16), 1000, dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "a.png")
    values = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    Image.fromarray(values, mode="F").save(tmp_path / "b.tif")
    a = read_image(tmp_path / "a.png", (16, 16))
    np.testing.assert_allclose(a, np.full((3, 16, 16), 1000 / 65535), rtol=1e-6)
    b = read_image(tmp_path / "b.tif", (16, 16))
    np.testing.assert_allclose(b, np.broadcast_to(values, (3, 16, 16)), atol=1e-6)


def test_single_files_lists_and_non_utf8_names(tmp_path):
    _images(tmp_path / "data", 2)
    odd = os.fsdecode(b"caf\xe9.png")
    (tmp_path / "data" / "img1.png").rename(tmp_path / "data" / odd)
    path = _config(tmp_path, source="data/img0.png")
    result = run(load_config(path), progress=False)
    assert [r["image"] for r in _rows(result.folder)] == ["img0.png"]
    listed = load_config(
        path, overrides=['data.source=["data/img0.png", "data/*.png"]'], output=tmp_path / "two"
    )
    result = run(listed, progress=False)
    assert [r["image"] for r in _rows(result.folder)] == ["caf\\xe9.png", "img0.png"]


def test_metrics_csv_quotes_line_breaks_and_escapes_formulas():
    names = ["=HYPERLINK(1)", "a\rb", "+1", "-x", "@y", 'plain, "quoted"']
    count = len(names)
    results = {
        "=cmd": {
            "index": np.arange(count), "id": np.asarray(names), "label": np.full(count, -1),
            "predicted": np.zeros(count, int), "target": np.zeros(count, int),
            "confidence": np.full(count, 0.5), "metric_deletion": np.full(count, np.nan),
        }
    }  # fmt: skip
    text = metrics_csv(["deletion"], results)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0][-1] == "deletion" and len(rows) == count + 1
    assert [r[1] for r in rows[1:]] == [
        "'=HYPERLINK(1)", "a\rb", "'+1", "'-x", "'@y", 'plain, "quoted"'
    ]  # fmt: skip
    assert {r[2] for r in rows[1:]} == {"'=cmd"} and rows[1][-1] == ""
