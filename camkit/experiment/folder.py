"""The output folder: who owns it, what camkit wrote into it, and who is running in it.

camkit writes only into a folder it created or one that carries its marker
(``.camkit/owner.json``); ``.camkit/manifest.json`` lists the methods, overlay formats and
random baselines of every run that used the folder, so camkit knows exactly which files it
wrote (see
:func:`written_files`) and deletes only those, with or without ``--overwrite``. A user's
own files in the folder are never touched.

``.camkit/lock`` is an advisory lock (``fcntl.flock``) held by the process that runs in the
folder (rank 0 under torchrun): a second run in the same folder stops at once with an error
naming the holder. The kernel releases the lock when its process dies, however it dies, so
a crashed run never blocks the next one; the file's stale content is simply overwritten.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import camkit
from camkit.errors import LockError, OutputFolderError
from camkit.experiment import files

STATE_DIR = ".camkit"
MARKER = f"{STATE_DIR}/owner.json"
MANIFEST = f"{STATE_DIR}/manifest.json"
LOCK = f"{STATE_DIR}/lock"
RUN_FILE = "run.json"
RESOLVED_FILE = "config.resolved.toml"
#: The merged outputs and records at the top of the folder.
TOP_FILES = ("metrics.csv", "summary.json", "report.html", RESOLVED_FILE, RUN_FILE)
#: The folders of the random baselines' shards and of the report's pictures.
BASELINES = "baselines"
REPORT = "report"
#: The report's input pictures, in ``report/``: a method id cannot start with ``_``.
REPORT_INPUT = "_input"
#: Folders camkit writes into, per method (``<folder>/<method>/``).
_PER_METHOD = ("maps", "overlays", REPORT)
#: Top-level names camkit writes (and ``--overwrite`` would touch).
TOP_NAMES = (*TOP_FILES, "maps", "overlays", BASELINES, REPORT, STATE_DIR)
_SHARD = re.compile(r"^shard-\d{5}\.npz$")
_INPUT_PICTURE = re.compile(r"^\d{6}\.png$")
_REPORT_PICTURE = re.compile(r"^(map-)?\d{6}\.png$")
_KEYS = ("methods", "formats", "baselines")


def _temporary_of(name: str) -> re.Pattern[str]:
    """The temporary files :func:`camkit.experiment.files.atomic_write` makes for ``name``."""
    return re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]+{re.escape(files.TEMP_SUFFIX)}$")


def owned(folder: Path) -> bool:
    """Whether ``folder`` carries camkit's marker (or the ``run.json`` of an older camkit).

    Example:
        >>> owned(Path("runs/quickstart"))  # after `camkit run examples/quickstart.toml`
        True
    """
    if (folder / MARKER).is_file():
        return True
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "fingerprint" in record and "camkit" in record


def claim(folder: Path, overwrite: bool) -> None:
    """Create ``folder`` or check that camkit may write into it, then mark it as camkit's.

    Raises:
        OutputFolderError: the path is a file, lies under a file, cannot be created or
            written, is a non-empty folder without camkit's marker (listing what a run
            would touch there), or its ``maps`` or ``overlays`` is a symbolic link.

    Example:
        >>> claim(Path("runs/new"), overwrite=False)  # creates it, with .camkit/owner.json
    """
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise OutputFolderError(
                f"output folder {folder}: {parent} is a file, not a folder; choose another --output"
            )
    check_no_links(folder)
    if folder.is_dir() and not owned(folder):
        entries = sorted(p.name for p in folder.iterdir())
        if entries:
            touched = [
                n + ("/" if (folder / n).is_dir() else "") for n in entries if n in TOP_NAMES
            ]
            what = (
                f"a run would touch: {', '.join(touched)}"
                if touched
                else f"it holds {len(entries)} entries of its own"
            )
            hint = "--overwrite only replaces camkit's own results; " if overwrite else ""
            raise OutputFolderError(
                f"output folder {folder} is not empty and was not created by camkit "
                f"(no {MARKER}); {what}. {hint}Choose a new or empty folder with --output"
            )
    try:
        (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
        if not (folder / MARKER).is_file():
            files.write_text(
                folder / MARKER,
                json.dumps({"created_by": "camkit", "camkit": camkit.__version__}) + "\n",
            )
    except OSError as exc:
        raise OutputFolderError(f"output folder {folder}: cannot write there: {exc}") from None


def read_manifest(folder: Path) -> dict[str, list[str]]:
    """The methods, overlay formats and baselines recorded for ``folder`` (empty lists when
    none).

    Example:
        >>> read_manifest(Path("runs/quickstart"))
        {'methods': ['cam', 'gradcam', ...], 'formats': ['png'], 'baselines': ['random', ...]}
    """
    manifest: dict[str, list[str]] = {key: [] for key in _KEYS}
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not (folder / MANIFEST).exists():
        # a folder of an older camkit: its run.json names its methods and formats
        try:
            config = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))["config"]
            data = {
                "methods": [m["id"] for m in config["methods"]],
                "formats": config["output"]["formats"],
            }
        except (OSError, ValueError, KeyError, TypeError):
            data = {}
    for key in manifest:
        values = data.get(key, []) if isinstance(data, dict) else []
        manifest[key] = [str(v) for v in values if isinstance(v, str)]
    return manifest


def record_in_manifest(
    folder: Path, methods: list[str], formats: list[str], baselines: Sequence[str] = ()
) -> None:
    """Add ``methods``, ``formats`` and ``baselines`` to the manifest before any of their
    files is written.

    Example:
        >>> record_in_manifest(Path("runs/new"), ["gradcam"], ["png"], ["random"])
    """
    manifest = read_manifest(folder)
    new = {"methods": methods, "formats": formats, "baselines": list(baselines)}
    updated = {key: list(dict.fromkeys([*manifest[key], *new[key]])) for key in _KEYS}
    files.write_text(folder / MANIFEST, json.dumps(updated, indent=2) + "\n")


def written_files(folder: Path, temporaries_only: bool = False) -> Iterator[Path]:
    """The files camkit wrote in ``folder`` that exist now: merged outputs, shards, overlays
    and report pictures of the manifest's methods, the report's input pictures, shards of the
    manifest's baselines, and temporary files of interrupted writes of those.

    Symbolic links are neither followed nor listed.

    Example:
        >>> folder = Path("runs/quickstart")
        >>> sorted(str(p.relative_to(folder)) for p in written_files(folder))[:2]
        ['baselines/blurred_random/shard-00000.npz', 'baselines/random/shard-00000.npz']
    """
    manifest = read_manifest(folder)
    overlay = re.compile(rf"^\d{{6}}\.({'|'.join(map(re.escape, manifest['formats'])) or '-'})$")
    places: list[tuple[Path, re.Pattern[str] | tuple[str, ...]]] = [
        (folder, TOP_FILES),
        (folder / REPORT / REPORT_INPUT, _INPUT_PICTURE),
    ]
    for method in manifest["methods"]:
        places += [
            (folder / "maps" / method, _SHARD),
            (folder / "overlays" / method, overlay),
            (folder / REPORT / method, _REPORT_PICTURE),
        ]
    places += [(folder / BASELINES / name, _SHARD) for name in manifest["baselines"]]
    for place, names in places:
        if place.is_symlink() or not place.is_dir():
            continue
        for path in place.iterdir():
            if path.is_symlink() or not path.is_file():
                continue
            name = path.name
            ours = name in names if isinstance(names, tuple) else bool(names.match(name))
            if name.endswith(files.TEMP_SUFFIX) and name.startswith("."):
                stem = name[1:].rsplit(".", 2)[0]
                is_temp = _temporary_of(stem).match(name) is not None and (
                    stem in names if isinstance(names, tuple) else bool(names.match(stem))
                )
                if is_temp:
                    yield path
            elif ours and not temporaries_only:
                yield path


def remove_written(folder: Path, temporaries_only: bool = False) -> None:
    """Delete what :func:`written_files` lists, then the method folders left empty.

    Example:
        >>> remove_written(Path("runs/quickstart"), temporaries_only=True)  # after a crash
    """
    check_no_links(folder)
    for path in list(written_files(folder, temporaries_only)):
        path.unlink(missing_ok=True)
    manifest = read_manifest(folder)
    _remove_if_empty(folder / REPORT / REPORT_INPUT)
    owners = {kind: manifest["methods"] for kind in _PER_METHOD}
    owners[BASELINES] = manifest["baselines"]
    for kind, names in owners.items():
        for name in names:
            _remove_if_empty(folder / kind / name)
        _remove_if_empty(folder / kind)


def check_no_links(folder: Path) -> None:
    """Refuse a folder whose ``maps``, ``overlays``, ``baselines`` or ``report`` is a
    symbolic link: camkit would write (and delete) through it, outside the folder.

    Example:
        >>> check_no_links(Path("runs/quickstart"))  # raises OutputFolderError for a link
    """
    for name in ("maps", "overlays", BASELINES, REPORT):
        if (folder / name).is_symlink():
            raise OutputFolderError(
                f"output folder {folder}: {name} is a symbolic link; camkit does not write or "
                "delete through links. Remove the link or choose another --output"
            )


def _remove_if_empty(path: Path) -> None:
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()


class FolderLock:
    """The advisory lock of one output folder; use as a context manager.

    Example:
        >>> with FolderLock(Path("runs/quickstart")):
        ...     pass  # nobody else runs in runs/quickstart meanwhile
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`~camkit.errors.LockError` naming its holder."""
        import fcntl

        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = _describe(handle.read(2000))
                handle.close()
                raise LockError(
                    f"output folder {self.folder} is in use by another camkit run ({holder}); "
                    "wait for it to finish, or choose another --output"
                ) from None
            # the file may have been replaced between open and flock: retry on the new one
            if _same_file(handle, self.path):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        handle.write(json.dumps(me) + "\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Give the lock back (the file stays; its content is stale from now on)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False


def _describe(text: str) -> str:
    try:
        holder: Any = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
        return f"pid {int(holder['pid'])} on {str(holder['host'])[:100]}, since {since}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its name"
