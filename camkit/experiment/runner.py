"""Running an experiment: explain every image with every method, measure, write, merge.

Work is cut into *shards* of ``batch_size`` consecutive images; a shard of one method is one
``maps/<method>/shard-NNNNN.npz`` file holding its maps, predictions and per-image metrics,
written atomically once complete. A re-run skips the shards that exist, so an interrupted
run loses at most the shards in flight, and the merged outputs (``metrics.csv``,
``summary.json``, ``report.html``) are rebuilt from the shards alone. The random baselines'
shards (:mod:`~camkit.experiment.baselines`) follow the methods' the same way.

The jobs live in their own modules: :mod:`~camkit.experiment.plan` (shards, the folder,
resuming), :mod:`~camkit.experiment.compute` (one shard) and
:mod:`~camkit.experiment.merging` (the merged outputs); this module runs them in order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import camkit
from camkit.engine.accel import layout
from camkit.errors import (
    CamkitError,
    ConfigError,
    DataError,
    GradientError,
    InputError,
    LayerError,
    TargetError,
)
from camkit.experiment import baselines
from camkit.experiment.compute import NormalizingModel, explain, write_shard
from camkit.experiment.config import ExperimentConfig
from camkit.experiment.data import Batch, Source, open_source
from camkit.experiment.folder import FolderLock, claim
from camkit.experiment.merging import merge
from camkit.experiment.models import Normalize, build_model
from camkit.experiment.plan import pending, plan_shards, prepare_folder
from camkit.experiment.task import Task, concept, reference_files
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

    Everything that can fail on the config (the data source, the model, every method on
    the first image) is checked before the output folder is touched. Rank 0 holds the
    folder's lock from then until the merged outputs are written.

    Args:
        config: a validated experiment (see :func:`camkit.experiment.load_config`).
        overwrite: replace camkit's results of a different config (or data) in the output
            folder instead of refusing.
        progress: show a progress bar per method (``None``: when on a terminal).

    Raises:
        ConfigError: a config value fails on the model or the data (the message names the
            key), or the folder holds results of another config.
        OutputFolderError: the folder cannot be used (see :mod:`camkit.experiment.folder`).
        LockError: another run is using the folder.
        DataError: an image cannot be decoded and ``data.on_error`` is ``"stop"``.

    Example:
        >>> from camkit.experiment import load_config
        >>> run(load_config("examples/quickstart.toml", overrides=["data.count=8"]))
        RunResult(folder=..., images=8, ...)
    """
    with layout.by_rule():  # outputs that do not depend on a timing
        return _run(config, overwrite, progress)


def _run(config: ExperimentConfig, overwrite: bool, progress: bool | None) -> RunResult:
    started = time.time()
    world = World.from_env(config.device)
    folder = Path(config.output.folder)
    lock = FolderLock(folder) if world.rank == 0 else None
    try:
        device = _device(config, world)
        check_memory(config, device)
        model, source, extractors, task = _load(config, device)
        _check_first_image(config, model, source, extractors, device, task)
        problem: CamkitError | None = None
        if lock is not None:
            try:
                claim(folder, overwrite)
                lock.acquire()
                chance = baselines.NAMES if config.metrics.baselines else ()
                located = {
                    str(spec.id): extractor.layers or []
                    for spec, extractor in zip(config.methods, extractors)
                    if spec.layer is None
                }
                prepare_folder(folder, config, source.fingerprint(), overwrite, chance, located)
            except CamkitError as exc:
                problem = exc
        problem = world.from_rank0(problem)
        if problem is not None:
            raise problem
        shards = plan_shards(len(source), config.batch_size)
        mine = shards[world.rank :: world.size]
        computed = skipped = 0
        for i, (spec, extractor) in enumerate(zip(config.methods, extractors)):
            method = str(spec.id)
            todo = pending(folder, method, mine, list(config.metrics.compute))
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
                    arrays = _explain(config, i, extractor, model, batch, device, task)
                    overlays = folder / "overlays" / method
                    write_shard(
                        shard.file(folder, method),
                        overlays,
                        batch,
                        arrays,
                        config.output,
                        config.task.kind,
                    )
                    computed += 1
                    bar.update(len(shard))
        if config.metrics.baselines:
            assert config.data.image_size is not None
            assert not isinstance(config.data.image_size, int)
            baselines.compute(
                folder, mine, first=str(config.methods[0].id), metrics_spec=config.metrics,
                image_size=config.data.image_size, seed=config.seed, model=model,
                source=source, device=device, task=task,
            )  # fmt: skip
        world.barrier()
        if world.rank == 0:
            merge(folder, config, source, shards, meta={"processes": world.size})
        world.barrier()
        seconds = time.time() - started
        return RunResult(folder, len(source), computed, skipped, seconds, world.rank, world.size)
    finally:
        if lock is not None:
            lock.release()
        world.close()


def _device(config: ExperimentConfig, world: World) -> torch.device:
    try:
        return world.device(config.device)
    except ConfigError as exc:
        raise ConfigError(f"{config.source or '(config)'}: {exc}") from None


def memory_estimate(config: ExperimentConfig) -> int:
    """A lower bound of the bytes one shard needs: its images a few times over (input,
    normalized copy, gradients, maps) and the perturbation metrics' batches of 128.

    Example:
        >>> from camkit.experiment import validate
        >>> memory_estimate(validate({"methods": [{"name": "cam"}]})) // 2**20  # MiB
        18
    """
    assert config.data.image_size is not None and not isinstance(config.data.image_size, int)
    height, width = config.data.image_size
    image = 3 * height * width * 4
    perturbed = {"deletion", "insertion"} & set(config.metrics.compute)
    return image * max(4 * config.batch_size, 3 * 128 if perturbed else 0)


def check_memory(config: ExperimentConfig, device: torch.device) -> None:
    """Refuse a config whose shards cannot fit in the memory free on ``device``."""
    need = memory_estimate(config)
    free = _free_memory(device)
    if free is not None and need > free:
        size = config.data.image_size
        raise ConfigError(
            f"{config.source or '(config)'}: data.image_size {size} "
            f"with batch_size {config.batch_size} needs at least {need / 2**30:.1f} GiB per shard, "
            f"but {device} has {free / 2**30:.1f} GiB free; lower data.image_size or batch_size"
        )


def _free_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` (``None`` when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _load(
    config: ExperimentConfig, device: torch.device
) -> tuple[NormalizingModel, Source, list[camkit.Extractor], Task]:
    """The model (behind its normalization), the images, one extractor per method and the
    ``[task]``; the data source (and its ground truth) is listed first, so a wrong path is
    reported before a model is built."""
    where = config.source or "(config)"
    try:
        source = open_source(
            config.data, config.base_dir, config.seed, exclude=Path(config.output.folder),
            task=config.task.kind,
        )  # fmt: skip
        references = reference_files(config)
        model = build_model(config.model, config.base_dir).to(device)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    extractors = []
    for i, spec in enumerate(config.methods):
        try:
            extractors.append(
                camkit.create(
                    spec.name,
                    model,
                    spec.layer,
                    **{**config.engine.model_dump(), "progress": False, **spec.options},
                )
            )
        except LayerError as exc:
            raise ConfigError(f"{where}: methods[{i}].layer: {exc}") from None
    mean, std = config.data.mean, config.data.std
    assert mean is not None and std is not None
    normalizing = NormalizingModel(model, Normalize(mean, std).to(device))
    reference = None
    if references:
        reference = concept(normalizing, references, config, device)
    task = Task(
        config.task, config.targets, config.data.embedded, reference, config.metrics.softmax
    )
    return normalizing, source, extractors, task


def _check_first_image(
    config: ExperimentConfig,
    model: NormalizingModel,
    source: Source,
    extractors: list[camkit.Extractor],
    device: torch.device,
    task: Task | None = None,
) -> None:
    """Explain and measure the first readable image with every method, so that a config
    that fails on the model (a layer, a target, the normalization) fails before any output
    is written, with the key named."""
    for index in range(len(source)):
        batch = source.batch([index])
        if batch.indices:
            for i, extractor in enumerate(extractors):
                _explain(config, i, extractor, model, batch, device, task)
            return
    raise DataError(
        f"data.source: none of the {len(source)} images could be read (first: "
        f"{source.batch([0]).skipped[0][1]}); see data.on_error"
    )


def _explain(
    config: ExperimentConfig,
    method: int,
    extractor: camkit.Extractor,
    model: NormalizingModel,
    batch: Batch,
    device: torch.device,
    task: Task | None = None,
) -> dict[str, np.ndarray]:
    """:func:`~camkit.experiment.compute.explain` with errors that name the config key."""
    where = config.source or "(config)"
    try:
        return explain(
            extractor, model, batch, targets=config.targets, metrics=config.metrics,
            map_dtype=config.output.map_dtype, device=device, seed=config.seed,
            spec=config.methods[method], task=task,
        )  # fmt: skip
    except TargetError as exc:
        key = "targets" if config.task.kind == "classification" else "task"
        raise ConfigError(f"{where}: {key}: {exc}") from None
    except LayerError as exc:
        raise ConfigError(f"{where}: methods[{method}].layer: {exc}") from None
    except InputError as exc:
        raise ConfigError(f"{where}: data.mean / data.std: {exc}") from None
    except GradientError as exc:
        raise ConfigError(f"{where}: methods[{method}]: {exc}") from None
    except ConfigError as exc:  # a [metrics] key that fails on the model
        raise ConfigError(f"{where}: {exc}") from None
