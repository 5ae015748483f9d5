"""Atomic writes and the TOML writer."""

from __future__ import annotations

import errno
import hashlib
import math
import sys

import numpy as np
import pytest

from camkit.errors import OutputFolderError
from camkit.experiment import files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    files.write_text(path, "old")

    def broken(f):
        f.write(b"half of the new con")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(path, broken)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    def broken(f):
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write(tmp_path / "sub" / "a.npz", broken)
    assert list((tmp_path / "sub").iterdir()) == []


def test_npz_round_trip_with_a_verified_checksum(tmp_path):
    path = tmp_path / "s.npz"
    files.write_npz(path, {"x": np.arange(3), "id": np.asarray(["a", "b"])})
    arrays = files.read_npz(path)
    assert arrays["x"].tolist() == [0, 1, 2] and arrays["id"].tolist() == ["a", "b"]
    # the stored checksum is the SHA-256 of names, dtypes, shapes and bytes, by hand:
    digest = hashlib.sha256()
    for key, value in (("id", np.asarray(["a", "b"])), ("x", np.arange(3))):
        digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode() + value.tobytes())
    with np.load(path) as data:
        assert str(data["sha256"]) == digest.hexdigest()
    # a changed array (rewritten with the old checksum) and a truncated file are refused
    with np.load(path) as data:
        np.savez(path, x=np.arange(1, 4), id=data["id"], sha256=data["sha256"])
    with pytest.raises(ValueError, match="does not match its checksum"):
        files.read_npz(path)
    files.write_npz(path, {"x": np.arange(3)})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        files.read_npz(path)


def test_toml_writer_round_trips():
    data = {
        "seed": 3,
        "name": 'a "quoted"\nline',
        "ratio": 0.1,
        "big": math.inf,
        "flag": False,
        "skipped": None,
        "sizes": [64, 64],
        "weird key": 1,
        "empty": {},
        "model": {"source": "x", "kwargs": {"num_classes": 4}},
        "methods": [{"name": "cam", "layer": ["a", "b"]}, {"name": "gradcam"}],
    }
    parsed = tomllib.loads(files.dumps_toml(data))
    expected = {k: v for k, v in data.items() if v is not None}
    assert parsed == expected


def test_written_files_get_the_umask_mode_not_the_private_temp_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        mode = files._umask_mode()
    finally:
        os.umask(old)
    assert mode == 0o644
    target = tmp_path / "out.txt"
    files.write_text(target, "hello")
    assert target.stat().st_mode & 0o777 == files.FILE_MODE


def test_a_full_disk_is_a_typed_error_naming_the_file(tmp_path):
    path = tmp_path / "metrics.csv"
    files.write_text(path, "old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputFolderError, match=r"cannot write .*metrics\.csv: No space left"):
        files.atomic_write(path, full)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
