"""Chance levels: every configured metric, measured on random maps of the same images.

Two baselines, so that every number of a method has its chance level beside it:

- ``random`` — per-pixel uniform noise, ``U(0, 1)`` independently at every pixel;
- ``blurred_random`` — the same kind of noise blurred by a Gaussian of sigma
  ``min(H, W) / 16`` (and min-max normalized), a map with blobs about the size of a CAM's.

Image ``i``'s maps are drawn from the stream ``(seed, i)``, so they are the same whatever the
batch size, shard or process. The baselines explain the same targets as the methods (read
from the first method's shard) and are measured by the same code. Each shard of a baseline
is one ``baselines/<name>/shard-NNNNN.npz`` file (``index``, ``metric_<name>``,
``curve_<name>``), written after the methods' shard and skipped when it exists, so baselines
resume like everything else. ``metrics.baselines = false`` turns them off.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from camkit.experiment import files
from camkit.experiment.stats import describe
from camkit.metrics import gaussian_blur

if TYPE_CHECKING:
    from camkit.experiment.config import ExperimentConfig
    from camkit.experiment.data import Source
    from camkit.experiment.runner import Normalized, Shard

#: The baselines, in the order reports show them.
NAMES = ("random", "blurred_random")
FOLDER = "baselines"


def random_maps(name: str, indices: list[int], size: tuple[int, int], seed: int) -> Tensor:
    """``(B, H, W)`` maps in ``[0, 1]`` of baseline ``name`` for images ``indices``.

    Example:
        >>> maps = random_maps("blurred_random", [0, 5], (64, 64), seed=0)
        >>> tuple(maps.shape), float(maps.min()), float(maps.max())
        ((2, 64, 64), 0.0, 1.0)
    """
    variant = NAMES.index(name)
    noise = torch.stack(
        [torch.from_numpy(np.random.default_rng([seed, i, variant]).random(size)) for i in indices]
    )
    if name == "random":
        return noise.float()
    sigma = min(size) / 16
    blurred = gaussian_blur(noise[:, None], sigma, kernel_size=2 * math.ceil(2 * sigma) + 1)[:, 0]
    low = blurred.amin((1, 2), keepdim=True)
    high = blurred.amax((1, 2), keepdim=True)
    return ((blurred - low) / (high - low)).float()


def shard_file(folder: Path, name: str, shard: Shard) -> Path:
    """Where baseline ``name`` keeps ``shard``."""
    return folder / FOLDER / name / f"shard-{shard.index:05d}.npz"


def compute(
    folder: Path,
    shards: list[Shard],
    config: ExperimentConfig,
    model: Normalized,
    source: Source,
    device: torch.device,
) -> None:
    """Measure every baseline on ``shards`` whose files are missing; the methods' shard
    files must exist (the targets and confidences come from the first method's)."""
    from camkit.experiment.runner import measure

    assert config.data.image_size is not None and not isinstance(config.data.image_size, int)
    first = str(config.methods[0].id)
    for shard in shards:
        todo = [n for n in NAMES if not shard_file(folder, n, shard).exists()]
        if not todo:
            continue
        batch = source.batch(range(shard.start, shard.stop))
        with np.load(shard.file(folder, first), allow_pickle=False) as data:
            targets = torch.from_numpy(data["target"]).to(device)
            confidence = torch.from_numpy(data["confidence"]).to(device)
        images = batch.images.to(device)
        for name in todo:
            maps = random_maps(name, list(batch.indices), config.data.image_size, config.seed)
            measured = measure(
                config.metrics, model, images, maps.to(device), targets, batch.boxes, confidence
            )
            arrays = {"index": np.asarray(batch.indices, dtype=np.int64)}
            arrays.update({_key(k): v for k, v in measured.items()})
            files.write_npz(shard_file(folder, name, shard), arrays)


def _key(name: str) -> str:
    return name if name.startswith("curve_") else f"metric_{name}"


def load(folder: Path, config: ExperimentConfig, shards: list[Shard]) -> dict[str, Any]:
    """Per baseline, its shards' arrays concatenated in image order; ``{}`` when a shard is
    missing (a run from before baselines existed, resumed without them)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in NAMES:
        paths = [shard_file(folder, name, s) for s in shards]
        if not all(p.exists() for p in paths):
            return {}
        parts: dict[str, list[np.ndarray]] = {}
        for path in paths:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    parts.setdefault(key, []).append(data[key])
        out[name] = {key: np.concatenate(values) for key, values in parts.items()}
    return out


def summarize(
    config: ExperimentConfig, chance: dict[str, dict[str, np.ndarray]]
) -> dict[str, dict[str, Any]]:
    """Per baseline and metric, the statistics of :func:`camkit.experiment.stats.describe`."""
    return {
        name: {m: describe(data[f"metric_{m}"], config.seed) for m in config.metrics.compute}
        for name, data in chance.items()
    }
