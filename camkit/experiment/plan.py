"""Planning a run: cutting the images into shards, and preparing (or resuming) the folder.

A *shard* is ``batch_size`` consecutive images of one method (or one random baseline),
stored as one ``maps/<method>/shard-NNNNN.npz`` (``baselines/<name>/shard-NNNNN.npz``) file
with a checksum. ``run.json`` records the
fingerprints of the config and of the data that wrote the folder, so a re-run of the same
config on the same images resumes, and anything else is refused. A stored shard counts as
done only once verified (:func:`shard_problem`); a damaged one is computed again.
"""

from __future__ import annotations

import json
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import camkit
from camkit.errors import ConfigError, OutputFolderError
from camkit.experiment import files
from camkit.experiment.config import ExperimentConfig, quote
from camkit.experiment.folder import (
    RESOLVED_FILE,
    RUN_FILE,
    check_no_links,
    record_in_manifest,
    remove_written,
)

#: The arrays of a shard with one row per explained image (besides ``metric_<name>``).
PER_IMAGE = ("index", "id", "label", "box", "predicted", "target", "confidence", "maps")
#: The arrays of a shard with one row per image skipped under ``data.on_error = "skip"``.
SKIPPED = ("skipped_index", "skipped_id", "skipped_reason")
#: The arrays of a method's shard that are not per image: the method's time and layers.
PER_SHARD = ("seconds", "layers")
#: The metrics that also store their per-image curve, ``curve_<name>``.
CURVED = ("deletion", "insertion")


@dataclass(frozen=True)
class Shard:
    """Images ``start .. stop - 1`` of the source."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def file(self, folder: Path, method: str) -> Path:
        """Where this shard of ``method`` is stored in the output ``folder``."""
        return folder / "maps" / method / f"shard-{self.index:05d}.npz"


def plan_shards(count: int, size: int) -> list[Shard]:
    """Consecutive shards of ``size`` images covering ``count`` images.

    Example:
        >>> [(s.start, s.stop) for s in plan_shards(5, 2)]
        [(0, 2), (2, 4), (4, 5)]
    """
    return [
        Shard(i, start, min(start + size, count)) for i, start in enumerate(range(0, count, size))
    ]


def prepare_folder(
    folder: Path,
    config: ExperimentConfig,
    data: dict[str, Any],
    overwrite: bool,
    baselines: Sequence[str] = (),
    located: dict[str, list[str]] | None = None,
) -> None:
    """Make ``folder`` (claimed and locked by the caller) ready for ``config``: new,
    resumable, or (``overwrite``) cleared of camkit's earlier results.

    Args:
        data: the fingerprint of the images (:meth:`~camkit.experiment.data.Source.fingerprint`).
        baselines: the random baselines the run will write (recorded in the manifest).
        located: method id -> the layers found on the first image, for methods whose
            ``layer`` is left to camkit (noted in ``config.resolved.toml``).

    Raises:
        ConfigError: the folder holds results of another config, or of other data, and
            ``overwrite`` is false.
        OutputFolderError: ``run.json`` is damaged, or ``maps`` is a symbolic link.
    """
    check_no_links(folder)
    record = folder / RUN_FILE
    fingerprint = config.fingerprint()
    if record.is_file() and not overwrite:
        previous = _read_record(record)
        if previous.get("fingerprint") != fingerprint:
            changes = differences(previous.get("config", {}), config.comparable())
            raise ConfigError(
                f"output folder {folder} holds results of a different configuration "
                f"(changed: {'; '.join(changes[:5]) or 'unknown'}); pass --overwrite to replace "
                "them, or choose another folder with --output"
            )
        before = previous.get("data")
        if before is not None and before != data:
            raise ConfigError(
                f"output folder {folder} holds results of other data: the images changed since "
                f"they were computed ({before.get('images')} images then, {data['images']} now, "
                "or files were modified); pass --overwrite to recompute every image, or "
                "choose another folder with --output"
            )
    remove_written(folder, temporaries_only=not overwrite)
    record_in_manifest(
        folder, [str(m.id) for m in config.methods], list(config.output.formats), baselines
    )
    files.write_text(folder / RESOLVED_FILE, files.dumps_toml(config.resolved()) + _notes(located))
    files.write_text(
        record,
        json.dumps(
            {
                "fingerprint": fingerprint,
                "camkit": camkit.__version__,
                "config": config.comparable(),
                "data": data,
            },
            indent=2,
        ),
    )


def _read_record(record: Path) -> dict[str, Any]:
    try:
        previous = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputFolderError(
            f"{record} is damaged ({str(exc)[:200]}); pass --overwrite to start the run afresh"
        ) from None
    if not isinstance(previous, dict):
        raise OutputFolderError(f"{record} is damaged; pass --overwrite to start afresh")
    return previous


def pending(folder: Path, method: str, shards: list[Shard], metrics: list[str]) -> list[Shard]:
    """The ``shards`` of ``method`` still to compute: missing, or damaged. A damaged shard
    (unreadable, failing its checksum, or inconsistent) is deleted, with a note on stderr.

    Example:
        >>> [s.index for s in pending(Path("runs/new"), "gradcam", plan_shards(8, 4), [])]
        [0, 1]
    """
    return pending_files(
        shards, lambda s: s.file(folder, method), lambda p, s: shard_problem(p, s, metrics)
    )


def pending_files(
    shards: list[Shard],
    where: Callable[[Shard], Path],
    problem_of: Callable[[Path, Shard], str | None],
) -> list[Shard]:
    """The ``shards`` whose file (at ``where(shard)``) is missing or has a problem
    (``problem_of(path, shard)``, see :func:`shard_problem`); a damaged file is deleted, with
    a note on stderr.

    Example:
        >>> where = lambda s: s.file(Path("runs/new"), "cam")
        >>> [s.index for s in pending_files(plan_shards(8, 4), where, lambda p, s: None)]
        [0, 1]
    """
    todo = []
    for shard in shards:
        path = where(shard)
        if not path.exists():
            todo.append(shard)
            continue
        problem = problem_of(path, shard)
        if problem is not None:
            print(
                f"camkit: note: {path} is damaged ({problem}); computing it again",
                file=sys.stderr,
            )
            path.unlink()
            todo.append(shard)
    return todo


def shard_problem(
    path: Path,
    shard: Shard,
    metrics: Sequence[str],
    per_image: Sequence[str] = PER_IMAGE,
    others: Sequence[str] = (*SKIPPED, *PER_SHARD),
) -> str | None:
    """What is wrong with the stored ``shard`` at ``path``, or ``None`` when it is complete:
    its checksum verified, the arrays ``per_image``, ``metric_<name>`` and ``curve_<name>``
    of ``metrics`` present with one row per image, ``others`` present, and together with
    ``skipped_index`` covering exactly the shard's images.

    Example:
        >>> shard = plan_shards(8, 16)[0]  # the quickstart's shards hold batch_size images
        >>> shard_problem(shard.file(Path("runs/quickstart"), "gradcam"), shard, ["deletion"])
    """
    try:
        arrays = files.read_npz(path)
    except ValueError as exc:
        return str(exc)
    rows = [
        *per_image,
        *(f"metric_{name}" for name in metrics),
        *(f"curve_{name}" for name in CURVED if name in metrics),
    ]
    missing = [key for key in [*rows, *others] if key not in arrays]
    if missing:
        return f"missing {', '.join(missing)}"
    index = arrays["index"]
    if any(len(arrays[key]) != len(index) for key in rows):
        return "its arrays have different lengths"
    covered = sorted([*index.tolist(), *arrays["skipped_index"].tolist()])
    if covered != list(range(shard.start, shard.stop)):
        return f"it does not hold images {shard.start}..{shard.stop - 1}"
    return None


def concatenate_shards(paths: Sequence[Path], owner: str) -> dict[str, np.ndarray]:
    """The arrays of the shard files ``paths`` concatenated in order, without the maps (so
    merging a large run stays small in memory) and without the checksums.

    Args:
        owner: whose shards they are, for the message (``"method 'cam'"``).

    Raises:
        OutputFolderError: a shard is missing or unreadable (a re-run computes it again).

    Example:
        >>> paths = [s.file(Path("runs/quickstart"), "cam") for s in plan_shards(8, 16)]
        >>> concatenate_shards(paths, "method 'cam'")["index"]
        array([0, 1, 2, 3, 4, 5, 6, 7])
    """
    parts: dict[str, list[np.ndarray]] = {}
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    if key not in (files.CHECKSUM_KEY, "maps"):
                        parts.setdefault(key, []).append(data[key])
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            missing = isinstance(exc, FileNotFoundError)
            raise OutputFolderError(
                f"shard {path} of {owner} is {'missing' if missing else 'damaged'}; "
                "run the same config again to compute it"
            ) from None
    return {key: np.concatenate(values) for key, values in parts.items()}


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """``key.path: old -> new`` for every leaf that differs.

    Example:
        >>> differences({"seed": 3, "data": {"count": 8}}, {"seed": 4, "data": {"count": 8}})
        ['seed: 3 -> 4']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            sub = f"{path}.{key}" if path else str(key)
            out += differences(old.get(key), new.get(key), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [f"{path}: {quote(old)} -> {quote(new)}"]


def _notes(located: dict[str, list[str]] | None) -> str:
    """Comments naming the layers camkit located: a comment, so that the file still reads
    (and fingerprints) as the config that was given."""
    if not located:
        return ""
    lines = ["", "# Layers located on the first image (methods without `layer`):"]
    lines += [f"#   {method}: {', '.join(layers)}" for method, layers in located.items()]
    return "\n".join(lines) + "\n"
