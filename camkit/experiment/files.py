"""Atomic file writes and a small TOML writer for the experiment outputs.

Every file of a run is written to a temporary file in its destination folder and renamed
over the destination (``os.replace``), so a reader, a crash or Ctrl-C never sees half a
file: a path either holds its old content, its complete new content, or nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from camkit.errors import OutputFolderError

TEMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


# mkstemp makes files only their owner can read; outputs get the mode the umask gives.
FILE_MODE = _umask_mode()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temporary file beside ``path`` and rename it to ``path``.

    Raises:
        OutputFolderError: the file cannot be written (a read-only folder, a full disk);
            the message names the path and the reason, and ``path`` is unchanged.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputFolderError):
            raise _cannot_write(path, exc) from None
        raise


def _cannot_write(path: Path, exc: OSError) -> OutputFolderError:
    reason = exc.strerror or str(exc)
    return OutputFolderError(f"cannot write {path}: {reason}; results written so far are kept")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    data = text.encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(path, write)


CHECKSUM_KEY = "sha256"


def checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of every array's name, dtype, shape and bytes, in name order.

    Example:
        >>> len(checksum({"a": np.zeros(3)}))
        64
    """
    digest = hashlib.sha256()
    for key in sorted(k for k in arrays if k != CHECKSUM_KEY):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` archive atomically, with their
    :func:`checksum` under the key ``"sha256"`` (see :func:`read_npz`)."""
    named: dict[str, Any] = {**arrays, CHECKSUM_KEY: np.asarray(checksum(arrays))}
    atomic_write(path, lambda f: np.savez(f, **named))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an archive :func:`write_npz` wrote, its checksum verified.

    Raises:
        ValueError: the file is truncated, not an archive, or its content does not match
            its checksum; the message says which.

    Example:
        >>> write_npz(Path("a.npz"), {"x": np.arange(3)})
        >>> read_npz(Path("a.npz"))["x"]
        array([0, 1, 2])
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None
    stored = arrays.pop(CHECKSUM_KEY, None)
    if stored is None:
        raise ValueError("it carries no checksum")
    if str(stored) != checksum(arrays):
        raise ValueError("its content does not match its checksum")
    return arrays


def write_image(path: Path, image: Image.Image) -> None:
    """Write ``image`` atomically in the format its suffix names (``.png``, ``.jpg``)."""
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}[path.suffix.lower()]
    atomic_write(path, lambda f: image.save(f, format=fmt))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- TOML -----------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Serialize nested dicts and lists of scalars, dicts and tables as TOML.

    ``None`` values are left out (TOML has no null; a missing key reads back as its
    default). Lists of dicts become arrays of tables (``[[methods]]``).
    """
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    nested = []
    for key, value in data.items():
        if value is None:
            continue
        if (isinstance(value, Mapping) and value) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        sub = [*path, _key(key)]
        if isinstance(value, Mapping):
            lines.extend(["", f"[{'.'.join(sub)}]"])
            _table(value, sub, lines)
        else:
            for item in value:
                lines.extend(["", f"[[{'.'.join(sub)}]]"])
                _table(item, sub, lines)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
