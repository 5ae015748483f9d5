"""Planning a run: cutting the images into shards, and preparing (or resuming) the folder.

A *shard* is ``batch_size`` consecutive images of one method, stored as one
``maps/<method>/shard-NNNNN.npz`` file. ``run.json`` records the fingerprint of the config
that wrote the folder, so a re-run of the same config resumes and a different config is
refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import camkit
from camkit.errors import ConfigError
from camkit.experiment import files
from camkit.experiment.config import ExperimentConfig

RUN_FILE = "run.json"
RESOLVED_FILE = "config.resolved.toml"
#: Everything a run writes into its folder (and ``--overwrite`` removes).
OUTPUTS = (
    "maps", "overlays", "metrics.csv", "summary.json", "report.html", RESOLVED_FILE, RUN_FILE
)  # fmt: skip


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


def prepare_folder(folder: Path, config: ExperimentConfig, overwrite: bool) -> None:
    """Make ``folder`` ready for ``config``: new, resumable, or (``overwrite``) cleared.

    Raises:
        ConfigError: the folder holds results of another config (or files camkit did not
            write) and ``overwrite`` is false.
    """
    record = folder / RUN_FILE
    fingerprint = config.fingerprint()
    if record.is_file() and not overwrite:
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous.get("fingerprint") != fingerprint:
            changes = differences(previous.get("config", {}), config.comparable())
            raise ConfigError(
                f"output folder {folder} holds results of a different configuration "
                f"(changed: {'; '.join(changes[:5]) or 'unknown'}); pass --overwrite to replace "
                "them, or choose another folder with --output"
            )
    elif folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise ConfigError(
            f"output folder {folder} is not empty and holds no camkit run ({RUN_FILE} is "
            "missing); pass --overwrite to write into it anyway, or choose another --output"
        )
    if overwrite:
        for name in OUTPUTS:
            path = folder / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    files.remove_stale_temporaries(folder)
    files.write_text(folder / RESOLVED_FILE, files.dumps_toml(config.resolved()))
    files.write_text(
        record,
        json.dumps(
            {
                "fingerprint": fingerprint,
                "camkit": camkit.__version__,
                "config": config.comparable(),
            },
            indent=2,
        ),
    )


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
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]
