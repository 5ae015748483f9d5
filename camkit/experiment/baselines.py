"""Chance levels: every configured metric, measured on random maps of the same images.

Two baselines, so that every number of a method has its chance level beside it:

- ``random`` — per-pixel uniform noise, ``U(0, 1)`` independently at every pixel;
- ``blurred_random`` — the same kind of noise blurred by a Gaussian of sigma
  ``min(H, W) / 16`` (and min-max normalized), a map with blobs about the size of a CAM's.

Image ``i``'s maps are drawn from the stream ``(seed, i)``, so they are the same whatever the
batch size, shard or process. The baselines explain the same targets as the methods (read
from the first method's shard, whose images they cover: the skipped ones stay skipped) and
are measured by the same code. Each shard of a baseline is one
``baselines/<name>/shard-NNNNN.npz`` file (``index``, ``skipped_index``, ``metric_<name>``,
``curve_<name>``), written with a checksum after the methods' shard and kept when it is
complete, so baselines resume like everything else and a damaged one is computed again.
``metrics.baselines = false`` turns them off.

The metrics that explain again see a baseline as a maker of maps unrelated to the image and
the model: ARCC's coherency compares the map with a second, independent draw of the same
baseline for the map-multiplied image, and a sanity check's chance level is the similarity
of the map with a third independent draw, i.e. of two unrelated maps (a method whose maps
change completely under randomization comes near it). Per-step values are not stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from camkit.errors import DataError, OutputFolderError
from camkit.experiment import files
from camkit.experiment.compute import NormalizingModel, Rerun, measure, no_measures, stored_name
from camkit.experiment.config import MetricsSpec
from camkit.experiment.data import Source
from camkit.experiment.folder import BASELINES
from camkit.experiment.plan import Shard, concatenate_shards, pending_files, shard_problem
from camkit.experiment.stats import describe
from camkit.experiment.task import Task
from camkit.metrics import RandomizationResult, gaussian_blur, spearman, ssim
from camkit.metrics.sanity import Mode

#: The baselines, in the order reports show them.
NAMES = ("random", "blurred_random")
FOLDER = BASELINES


def random_maps(
    name: str, indices: Sequence[int], size: tuple[int, int], seed: int, draw: int = 0
) -> Tensor:
    """``(B, H, W)`` maps in ``[0, 1]`` of baseline ``name`` for images ``indices``; draws
    ``1, 2, ...`` are further maps, independent of draw 0 (the one measured).

    Example:
        >>> maps = random_maps("blurred_random", [0, 5], (64, 64), seed=0)
        >>> tuple(maps.shape), float(maps.min()), float(maps.max())
        ((2, 64, 64), 0.0, 1.0)
    """
    variant = NAMES.index(name)
    noise = torch.stack(
        [torch.from_numpy(np.random.default_rng(_stream(seed, i, variant, draw)).random(size))
         for i in indices]
    )  # fmt: skip
    if name == "random":
        return noise.float()
    sigma = min(size) / 16
    blurred = gaussian_blur(noise[:, None], sigma, kernel_size=2 * math.ceil(2 * sigma) + 1)[:, 0]
    low = blurred.amin((1, 2), keepdim=True)
    high = blurred.amax((1, 2), keepdim=True)
    return ((blurred - low) / (high - low)).float()


def _stream(seed: int, index: int, variant: int, draw: int) -> list[int]:
    # draw 0 keeps the stream of the runs made before there were further draws
    return [seed, index, variant] if draw == 0 else [seed, index, variant, draw]


def baseline_rerun(
    name: str, maps: Tensor, indices: Sequence[int], size: tuple[int, int], seed: int
) -> Rerun:
    """The :class:`~camkit.experiment.compute.Rerun` of baseline ``name`` whose maps of
    images ``indices`` are ``maps``: independent draws, as the module docstring says.

    Example:
        >>> maps = random_maps("random", [3], (32, 32), seed=0)
        >>> check = baseline_rerun("random", maps, [3], (32, 32), seed=0).randomization("cascading")
        >>> abs(float(check.spearman[-1, 0])) < 0.2
        True
    """

    def again(images: Tensor, targets: Tensor, wanted: Sequence[int]) -> Tensor:
        return random_maps(name, wanted, size, seed, draw=1).to(images.device)

    def randomization(mode: Mode) -> RandomizationResult:
        other = random_maps(name, indices, size, seed, draw=2).to(maps.device)
        similarity = spearman(maps, other)[None], ssim(maps, other)[None]
        return RandomizationResult(mode, ["(an independent draw)"], *similarity)

    return Rerun(again, randomization)


def shard_file(folder: Path, name: str, shard: Shard) -> Path:
    """Where baseline ``name`` keeps ``shard``."""
    return folder / FOLDER / name / f"shard-{shard.index:05d}.npz"


def compute(
    folder: Path,
    shards: list[Shard],
    *,
    first: str,
    metrics_spec: MetricsSpec,
    image_size: tuple[int, int],
    seed: int,
    model: NormalizingModel,
    source: Source,
    device: torch.device,
    task: Task | None = None,
) -> None:
    """Measure every baseline on ``shards`` whose files are missing or damaged.

    Args:
        first: the method whose complete shard files give the images, targets and
            confidences.
        metrics_spec: what to measure, and how.
        image_size: ``(H, W)`` of the maps.
        seed: the run's seed, which seeds the random maps.
        task: the run's ``[task]`` (not classification: the baselines explain its targets,
            prepared again from the clean images as the methods' were).
    """
    metrics = list(metrics_spec.compute)

    def problem(path: Path, shard: Shard) -> str | None:
        return shard_problem(path, shard, metrics, per_image=("index",), others=("skipped_index",))

    todo = {
        name: pending_files(shards, partial(shard_file, folder, name), problem) for name in NAMES
    }
    for shard in shards:
        names = [name for name in NAMES if shard in todo[name]]
        if not names:
            continue
        path = shard.file(folder, first)
        try:
            method = files.read_npz(path)
        except ValueError as exc:
            raise OutputFolderError(
                f"shard {path} is damaged ({exc}); run the same config again to compute it"
            ) from None
        indices = method["index"].tolist()
        arrays = {"index": method["index"], "skipped_index": method["skipped_index"]}
        if not indices:  # every image of the shard was skipped
            for name in names:
                measured = no_measures(metrics_spec, image_size)
                files.write_npz(shard_file(folder, name, shard), {**arrays, **measured})
            continue
        batch = source.batch(indices)
        if batch.indices != indices:
            raise DataError(
                f"data.source: {batch.skipped[0][1]} was read for the methods but cannot be "
                f"read now ({batch.skipped[0][2]}); pass --overwrite to start afresh"
            )
        images = batch.images.to(device)
        targets = torch.from_numpy(method["target"]).to(device)
        # on the CPU, where the methods' confidences (and every metric's scores) are
        confidence = torch.from_numpy(method["confidence"])
        prepared = None
        if task is not None and task.kind != "classification":
            prepared = task.prepare(model, batch, images)
        for name in names:
            maps = random_maps(name, indices, image_size, seed)
            if prepared is not None and task is not None:
                measured = task.measure(
                    metrics_spec, model, images, maps.to(device), prepared, indices=indices,
                    seed=seed,
                )  # fmt: skip
                stored = {stored_name(k): v for k, v in measured.items()}
                files.write_npz(shard_file(folder, name, shard), {**arrays, **stored})
                continue
            measured = measure(
                metrics_spec, model, images, maps.to(device), targets, batch.boxes, confidence,
                indices=indices, seed=seed,
                rerun=baseline_rerun(name, maps, indices, image_size, seed),
            )  # fmt: skip
            stored = {stored_name(k): v for k, v in measured.items() if not k.startswith("steps_")}
            files.write_npz(shard_file(folder, name, shard), {**arrays, **stored})


def load(folder: Path, shards: list[Shard]) -> dict[str, dict[str, np.ndarray]]:
    """Per baseline, its shards' arrays concatenated in image order; ``{}`` when a shard is
    missing (a run from before baselines existed, resumed without them).

    Raises:
        OutputFolderError: a shard is damaged (a re-run computes it again).
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in NAMES:
        paths = [shard_file(folder, name, s) for s in shards]
        if not all(p.exists() for p in paths):
            return {}
        out[name] = concatenate_shards(paths, f"baseline {name!r}")
    return out


def summarize(
    metrics: Sequence[str], seed: int, chance: dict[str, dict[str, np.ndarray]]
) -> dict[str, dict[str, Any]]:
    """Per baseline and metric, the statistics of :func:`camkit.experiment.stats.describe`
    (bootstrap seeded by ``seed``)."""
    return {
        name: {m: describe(data[f"metric_{m}"], seed) for m in metrics}
        for name, data in chance.items()
    }
