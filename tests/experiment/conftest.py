"""Small experiment files for the runner tests: 8 shapes images, shards of 4."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = """
batch_size = 4

[data]
count = 8

[[methods]]
name = "cam"

[[methods]]
name = "gradcam"
layer = "features"

[metrics]
step = 512

[output]
folder = "{folder}"
report_images = 3
"""


@pytest.fixture
def small_config(tmp_path: Path) -> Path:
    """An experiment file writing to ``tmp_path / "out"``."""
    path = tmp_path / "exp.toml"
    path.write_text(SMALL.format(folder=(tmp_path / "out").as_posix()))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete run of the small experiment, shared by read-only tests: (config, result)."""
    from camkit.experiment import load_config, run

    root = tmp_path_factory.mktemp("finished")
    path = root / "exp.toml"
    path.write_text(SMALL.format(folder=(root / "out").as_posix()))
    config = load_config(path)
    return config, run(config, progress=False)
