"""Running an experiment: explain every image with every method, measure, write, merge.

Work is cut into *shards* of ``batch_size`` consecutive images; a shard of one method is one
``maps/<method>/shard-NNNNN.npz`` file holding its maps, predictions and per-image metrics,
written atomically once complete. A re-run skips the shards that exist, so an interrupted
run loses at most the shards in flight, and the merged outputs (``metrics.csv``,
``summary.json``, ``report.html``) are rebuilt from the shards alone.

The jobs live in their own modules: :mod:`~camkit.experiment.plan` (shards, the folder,
resuming), :mod:`~camkit.experiment.compute` (one shard) and
:mod:`~camkit.experiment.merging` (the merged outputs); this module runs them in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import camkit
from camkit.errors import ConfigError, LayerError, TargetError
from camkit.experiment.compute import NormalizingModel, explain, write_shard
from camkit.experiment.config import ExperimentConfig
from camkit.experiment.data import Source, open_source
from camkit.experiment.merging import merge
from camkit.experiment.models import Normalize, build_model
from camkit.experiment.plan import plan_shards, prepare_folder
from camkit.experiment.world import World

__all__ = ["RunResult", "merge", "plan_shards", "run"]


@dataclass
class RunResult:
    """What :func:`run` did."""

    folder: Path
    images: int
    computed: int
    skipped: int
    seconds: float
    rank: int = 0
    processes: int = 1


def run(
    config: ExperimentConfig, *, overwrite: bool = False, progress: bool | None = None
) -> RunResult:
    """Run ``config``: compute the missing shards, then merge every output.

    Args:
        config: a validated experiment (see :func:`camkit.experiment.load_config`).
        overwrite: replace the results of a different config in the output folder instead
            of refusing.
        progress: show a progress bar per method (``None``: when on a terminal).

    Example:
        >>> from camkit.experiment import load_config
        >>> run(load_config("examples/quickstart.toml", overrides=["data.count=4"]))
        RunResult(folder=..., images=4, ...)
    """
    started = time.time()
    world = World.from_env(config.device)
    try:
        device = world.device(config.device)
        folder = Path(config.output.folder)
        # everything that can fail on the config happens before the folder is touched
        model, source, extractors = _load(config, device)
        problem = None
        if world.rank == 0:
            try:
                prepare_folder(folder, config, overwrite)
            except ConfigError as exc:
                problem = str(exc)
        problem = world.from_rank0(problem)
        if problem is not None:
            raise ConfigError(problem)
        shards = plan_shards(len(source), config.batch_size)
        mine = shards[world.rank :: world.size]
        computed = skipped = 0
        for spec, extractor in zip(config.methods, extractors):
            method = str(spec.id)
            todo = [s for s in mine if not s.file(folder, method).exists()]
            skipped += len(mine) - len(todo)
            done = sum(len(s) for s in mine) - sum(len(s) for s in todo)
            label = method if world.size == 1 else f"{method} (rank 0 of {world.size})"
            # one bar per method; under torchrun rank 0 speaks for all
            show = progress is not False and world.rank == 0
            with tqdm(
                total=sum(len(s) for s in mine), initial=done, desc=label, unit="img",
                disable=None if show and progress is None else not show,
            ) as bar:  # fmt: skip
                for shard in todo:
                    batch = source.batch(range(shard.start, shard.stop))
                    try:
                        arrays = explain(
                            extractor, model, batch, targets=config.targets,
                            metrics=config.metrics, map_dtype=config.output.map_dtype,
                            device=device,
                        )  # fmt: skip
                    except TargetError as exc:
                        where = config.source or "(config)"
                        raise ConfigError(f"{where}: targets: {exc}") from None
                    overlays = folder / "overlays" / method
                    write_shard(shard.file(folder, method), overlays, batch, arrays, config.output)
                    computed += 1
                    bar.update(len(shard))
        world.barrier()
        if world.rank == 0:
            merge(folder, config, source, shards, meta={"processes": world.size})
        world.barrier()
        seconds = time.time() - started
        return RunResult(folder, len(source), computed, skipped, seconds, world.rank, world.size)
    finally:
        world.close()


def _load(
    config: ExperimentConfig, device: torch.device
) -> tuple[NormalizingModel, Source, list[camkit.Extractor]]:
    """The model (behind its normalization), the images and one extractor per method."""
    where = config.source or "(config)"
    try:
        model = build_model(config.model, config.base_dir).to(device)
        source = open_source(config.data, config.base_dir, config.seed)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    extractors = []
    for i, spec in enumerate(config.methods):
        try:
            extractors.append(
                camkit.create(spec.name, model, spec.layer, progress=False, **spec.options)
            )
        except LayerError as exc:
            raise ConfigError(f"{where}: methods[{i}].layer: {exc}") from None
    mean, std = config.data.mean, config.data.std
    assert mean is not None and std is not None
    return NormalizingModel(model, Normalize(mean, std).to(device)), source, extractors
