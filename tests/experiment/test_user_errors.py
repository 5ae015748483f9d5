"""One row per user or environment mistake (issue 15): a typed error naming the key or
file, raised before any output is written; in the CLI one line ``camkit: error: ...``, no
traceback, exit code 2 (usage, config) or 1 (environment: files, folders, data).

Add a case by appending a :class:`Case` to :data:`CASES`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import camkit
from camkit import zoo
from camkit.cli import main
from camkit.errors import CamkitError, ConfigError, DataError, OutputFolderError
from camkit.experiment import load_config, run

BASE = """
batch_size = 2

[data]
count = 2

[[methods]]
name = "cam"

[metrics]
compute = ["average_drop"]

[output]
overlays = false
report_images = 1
"""

FILES = BASE.replace("count = 2", 'source = "data"\nimage_size = 32')


@dataclass
class Case:
    """A mistake: the experiment file, what else is on disk, and the error it must give.

    Attributes:
        config: the experiment file's bytes (text is written as UTF-8); ``name`` its name.
        setup: prepares more files, given the test's folder (images, an output folder).
        overrides: ``--set`` items.
        error: the error type.
        names: a regex the message must match (the key path or the file).
        exit_code: the CLI's exit status.
        overwrite: pass ``--overwrite``.
        before_output: the error comes before anything is written (images are decoded
            lazily, so a bad file after the first one stops the run part-way).
    """

    id: str
    config: str | bytes
    error: type[CamkitError]
    names: str
    exit_code: int = 2
    name: str = "exp.toml"
    overrides: list[str] = field(default_factory=list)
    setup: Callable[[Path], None] | None = None
    overwrite: bool = False
    before_output: bool = True


def _images(tmp: Path, count: int = 2) -> None:
    (tmp / "data").mkdir(exist_ok=True)
    images, _, _ = zoo.shapes.generate(count, seed=3)
    for i, image in enumerate(images):
        camkit.viz.to_pil(image).save(tmp / "data" / f"img{i}.png")


def _with_bad_file(content: bytes) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _images(tmp)
        (tmp / "data" / "img0.png").write_bytes(content)

    return setup


def _all_bad(tmp: Path) -> None:
    _images(tmp)
    for path in (tmp / "data").iterdir():
        path.write_bytes(b"not an image")


def _truncated(tmp: Path) -> None:
    _images(tmp)
    path = tmp / "data" / "img1.png"
    path.write_bytes(path.read_bytes()[:60])


def _output_is_a_file(tmp: Path) -> None:
    (tmp / "out").write_text("mine")


def _output_under_a_file(tmp: Path) -> None:
    (tmp / "f").write_text("mine")


def _foreign_folder(tmp: Path) -> None:
    (tmp / "out" / "maps").mkdir(parents=True)
    (tmp / "out" / "maps" / "mine.txt").write_text("mine")


def _maps_link(tmp: Path) -> None:
    (tmp / "out" / ".camkit").mkdir(parents=True)
    (tmp / "out" / ".camkit" / "owner.json").write_text("{}")
    (tmp / "elsewhere").mkdir()
    (tmp / "out" / "maps").symlink_to(tmp / "elsewhere")


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + (
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nmethods: [{name: cam}]\n"
)
LONG = "x" * 100_000

CASES = [
    Case("config-not-utf8", b"seed = 1\n# caf\xe9\n", ConfigError, r"exp\.toml: not UTF-8"),
    Case("config-binary", b"\x00\x01\x02seed", ConfigError, r"exp\.toml: a binary file"),
    Case("config-too-large", "# " + "x" * (1 << 20), ConfigError, r"exp\.toml: \d+ bytes"),
    Case("config-nested", "a = " + "[" * 100_000, ConfigError, r"exp\.toml: .*nest"),
    Case("yaml-alias-bomb", ALIAS_BOMB, ConfigError, r"exp\.yaml: .*aliases", name="exp.yaml"),
    Case(
        "yaml-duplicate-key",
        "seed: 1\nseed: 2\nmethods: [{name: cam}]\n",
        ConfigError,
        r"exp\.yaml: .*duplicate key 'seed'",
        name="exp.yaml",
    ),
    Case("device-unknown", BASE, ConfigError, r"device: ", overrides=["device=foo"]),
    Case("device-empty", BASE, ConfigError, r"device: ", overrides=["device=''"]),
    Case("device-meta", BASE, ConfigError, r"device: ", overrides=["device=meta"]),
    Case("device-missing", BASE, ConfigError, r"device: 'cuda:7'", overrides=["device=cuda:7"]),
    Case("seed-negative", BASE, ConfigError, r"seed: ", overrides=["seed=-1"]),
    Case("seed-too-large", BASE, ConfigError, r"seed: ", overrides=["seed=4294967296"]),
    Case("batch-size-bool", BASE, ConfigError, r"batch_size: ", overrides=["batch_size=true"]),
    Case(
        "overlays-string",
        BASE,
        ConfigError,
        r"output\.overlays: ",
        overrides=["output.overlays='no'"],
    ),
    Case(
        "std-infinite", BASE, ConfigError, r"data\.std\[0\]: ", overrides=["data.std=[.inf, 1, 1]"]
    ),
    Case("mean-nan", BASE, ConfigError, r"data\.mean\[1\]: ", overrides=["data.mean=[0, .nan, 0]"]),
    Case("count-huge", BASE, ConfigError, r"data\.count: ", overrides=["data.count=1000000000"]),
    Case(
        "image-size-huge",
        BASE,
        ConfigError,
        r"data\.image_size: ",
        overrides=["data.image_size=60000"],
    ),
    Case("long-value", BASE, ConfigError, r"seed: ", overrides=[f"seed={LONG}"]),
    Case("targets-out-of-range", BASE, ConfigError, r"targets: ", overrides=["targets=99"]),
    Case(
        "layer-not-spatial",
        BASE,
        ConfigError,
        r"methods\[0\]\.layer: ",
        overrides=["methods[0].layer=fc"],
    ),
    Case("data-source-missing", FILES, ConfigError, r"data\.source: 'data'"),
    Case(
        "data-checked-before-the-model",
        FILES.replace("[data]", '[model]\nsource = "python:no-such-file.py:build"\n[data]'),
        ConfigError,
        r"data\.source: 'data'",
    ),
    Case(
        "data-source-empty-list", BASE, ConfigError, r"data\.source: ", overrides=["data.source=[]"]
    ),
    Case(
        "image-corrupt",
        FILES,
        DataError,
        r"img0\.png",
        1,
        setup=_with_bad_file(b"\x89PNG\r\n\x1a\nbroken"),
    ),
    Case("image-not-an-image", FILES, DataError, r"img0\.png", 1, setup=_with_bad_file(b"hello")),
    Case(
        "images-none-readable",
        FILES,
        DataError,
        r"none of the 2 images could be read \(first: img0\.png\)",
        1,
        overrides=["data.on_error=skip"],
        setup=_all_bad,
    ),
    Case(
        "image-truncated",
        FILES,
        DataError,
        r"img1\.png",
        1,
        setup=_truncated,
        before_output=False,
    ),
    Case("output-is-a-file", BASE, OutputFolderError, r"out is a file", 1, setup=_output_is_a_file),
    Case(
        "output-under-a-file",
        BASE,
        OutputFolderError,
        r"f is a file",
        1,
        overrides=["output.folder=f/out"],
        setup=_output_under_a_file,
    ),
    Case(
        "overwrite-foreign-folder",
        BASE,
        OutputFolderError,
        r"not created by camkit.*maps/",
        1,
        setup=_foreign_folder,
        overwrite=True,
    ),
    Case(
        "overwrite-maps-link",
        BASE,
        OutputFolderError,
        r"maps is a symbolic link",
        1,
        setup=_maps_link,
        overwrite=True,
    ),
]


def _prepare(case: Case, tmp_path: Path) -> tuple[Path, list[str]]:
    path = tmp_path / case.name
    if isinstance(case.config, bytes):
        path.write_bytes(case.config)
    else:
        path.write_text(case.config, encoding="utf-8")
    if case.setup is not None:
        case.setup(tmp_path)
    os.chdir(tmp_path)  # output.folder in overrides is relative to here
    overrides = [*case.overrides]
    if not any(item.startswith("output.folder=") for item in overrides):
        overrides.append(f"output.folder={(tmp_path / 'out').as_posix()}")
    return path, overrides


def _shorter_than_a_few_hundred_characters_per_value(message: str) -> None:
    assert len(message) < 1200, message[:300]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_raises_a_typed_error_naming_the_key_or_file(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, overrides = _prepare(case, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(case.error) as caught:
        run(load_config(path, overrides=overrides), overwrite=case.overwrite, progress=False)
    message = str(caught.value)
    assert re.search(case.names, message), message[:500]
    assert "\n" not in message and caught.value.exit_code == case.exit_code
    _shorter_than_a_few_hundred_characters_per_value(message)
    # nothing was written: a corrected config then runs without --overwrite
    if case.before_output:
        assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_prints_one_line_and_exits_with_the_errors_code(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path, overrides = _prepare(case, tmp_path)
    argv = ["run", str(path), "--quiet", *(f"--set={item}" for item in overrides)]
    code = main(argv + (["--overwrite"] if case.overwrite else []))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("camkit: error: "), err[:500]
    assert re.search(case.names, lines[0]), lines[0][:500]
    assert code == case.exit_code


def test_a_config_that_fails_on_the_first_image_can_be_corrected_without_overwrite(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(BASE)
    out = ["output.folder=" + (tmp_path / "out").as_posix()]
    with pytest.raises(ConfigError, match="targets: "):
        run(load_config(path, overrides=[*out, "targets=99"]), progress=False)
    assert run(load_config(path, overrides=[*out, "targets=1"]), progress=False).computed == 1


def test_a_byte_order_mark_and_an_unquoted_glob_in_set_are_fine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path, 3)
    path = tmp_path / "exp.toml"
    path.write_bytes(b"\xef\xbb\xbf" + FILES.encode())
    config = load_config(path, overrides=["data.source=data/*.png"])
    assert config.data.source == "data/*.png"
    config = load_config(path, overrides=["data.source=*.png"])  # YAML would read an alias
    assert config.data.source == "*.png"


def test_a_cuda_index_past_the_machines_gpus_names_what_there_is(monkeypatch):
    import torch

    from camkit.experiment.world import World

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"device: 'cuda:7': this machine has 2 cuda device"):
        World().device("cuda:7")
    assert World().device("cuda:1") == torch.device("cuda", 1)
