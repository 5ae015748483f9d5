"""Running an experiment: explain every image with every method, measure, write, merge.

Work is cut into *shards* of ``batch_size`` consecutive images; a shard of one method is one
``maps/<method>/shard-NNNNN.npz`` file holding its maps, predictions and per-image metrics,
written atomically once complete. A re-run skips the shards that exist, so an interrupted
run loses at most the shards in flight, and the merged outputs (``metrics.csv``,
``summary.json``, ``report.html``) are rebuilt from the shards alone.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import camkit
from camkit.errors import ConfigError, LayerError, TargetError
from camkit.experiment import baselines, files, stats
from camkit.experiment.config import ExperimentConfig, MethodSpec, MetricsSpec
from camkit.experiment.data import Batch, Source, open_source
from camkit.experiment.models import Normalize, build_model
from camkit.experiment.world import World
from camkit.metrics import (
    auc,
    confidence_change,
    energy_pointing_game,
    perturbation_curve,
    pointing_game,
    target_scores,
)

RUN_FILE = "run.json"
RESOLVED_FILE = "config.resolved.toml"
#: Everything a run writes into its folder (and ``--overwrite`` removes).
OUTPUTS = (
    "maps", "overlays", "metrics.csv", "summary.json", "report.html", RESOLVED_FILE, RUN_FILE,
    "baselines", "report",
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
        return folder / "maps" / method / f"shard-{self.index:05d}.npz"


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


def plan_shards(count: int, size: int) -> list[Shard]:
    """Consecutive shards of ``size`` images covering ``count`` images."""
    return [
        Shard(i, start, min(start + size, count)) for i, start in enumerate(range(0, count, size))
    ]


def run(
    config: ExperimentConfig, *, overwrite: bool = False, progress: bool | None = None
) -> RunResult:
    """Run ``config``: compute the missing shards, then merge every output.

    Args:
        config: a validated experiment (see :func:`camkit.experiment.load_config`).
        overwrite: replace the results of a different config in the output folder instead
            of refusing.
        progress: show a progress bar per method (``None``: when on a terminal).
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
            todo = [s for s in mine if not s.file(folder, str(spec.id)).exists()]
            skipped += len(mine) - len(todo)
            done = sum(len(s) for s in mine) - sum(len(s) for s in todo)
            label = str(spec.id) if world.size == 1 else f"{spec.id} (rank 0 of {world.size})"
            # one bar per method; under torchrun rank 0 speaks for all
            show = progress is not False and world.rank == 0
            with tqdm(
                total=sum(len(s) for s in mine), initial=done, desc=label, unit="img",
                disable=None if show and progress is None else not show,
            ) as bar:  # fmt: skip
                for shard in todo:
                    batch = source.batch(range(shard.start, shard.stop))
                    try:
                        arrays = explain(extractor, model, batch, config, device)
                    except TargetError as exc:
                        where = config.source or "(config)"
                        raise ConfigError(f"{where}: targets: {exc}") from None
                    _write_shard(folder, shard, spec, config, batch, arrays)
                    computed += 1
                    bar.update(len(shard))
        if config.metrics.baselines:
            baselines.compute(folder, mine, config, model, source, device)
        world.barrier()
        if world.rank == 0:
            merge(folder, config, source, shards, meta={"processes": world.size})
        world.barrier()
        seconds = time.time() - started
        return RunResult(folder, len(source), computed, skipped, seconds, world.rank, world.size)
    finally:
        world.close()


@dataclass
class Normalized:
    """The model and the normalization its ``[0, 1]`` images need; call it on images."""

    model: nn.Module
    normalize: nn.Module

    def __call__(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))


def _load(
    config: ExperimentConfig, device: torch.device
) -> tuple[Normalized, Source, list[camkit.Extractor]]:
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
    return Normalized(model, Normalize(mean, std).to(device)), source, extractors


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
            changes = _differences(previous.get("config", {}), config.comparable())
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


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """``key.path: old -> new`` for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in dict.fromkeys([*old, *new]):
            sub = f"{path}.{key}" if path else str(key)
            out += _differences(old.get(key), new.get(key), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{path}[{i}]")
        ]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


# -- one shard -----------------------------------------------------------------------------


def explain(
    extractor: camkit.Extractor,
    model: Normalized,
    batch: Batch,
    config: ExperimentConfig,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Maps, predictions and per-image metrics of one method on one batch.

    The method sees normalized inputs; the metrics perturb the ``[0, 1]`` images, so a
    zero substrate is black whatever the normalization.
    """
    images = batch.images.to(device)
    targets: Any = None
    if config.targets == "label":
        assert batch.labels is not None
        targets = batch.labels.to(device)
    elif isinstance(config.targets, int):
        targets = config.targets
    started = time.perf_counter()
    result = extractor(model.normalize(images), targets=targets)
    maps = result.maps.detach().float()
    stored = maps.cpu().numpy().astype(config.output.map_dtype)  # waits for the device
    seconds = time.perf_counter() - started
    chosen = result.targets.to(device)
    confidence = target_scores(model, images, chosen, softmax=config.metrics.softmax)
    arrays: dict[str, np.ndarray] = {
        "index": np.asarray(batch.indices, dtype=np.int64),
        "id": np.asarray(batch.ids),
        "label": _ints(batch.labels, len(batch.indices)),
        "box": _ints(batch.boxes, len(batch.indices), width=4),
        "predicted": result.scores.argmax(1).cpu().numpy().astype(np.int64),
        "target": result.targets.cpu().numpy().astype(np.int64),
        "confidence": confidence.double().numpy(),
        "maps": stored,
        "seconds": np.asarray([seconds]),
        "layers": np.asarray(result.layers),
    }
    measured = measure(config.metrics, model, images, maps, chosen, batch.boxes, confidence)
    arrays.update({k if k.startswith("curve_") else f"metric_{k}": v for k, v in measured.items()})
    return arrays


def measure(
    spec: MetricsSpec,
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    boxes: Tensor | None,
    confidence: Tensor,
) -> dict[str, np.ndarray]:
    """Every metric of ``spec.compute`` per image; NaN where it does not apply (no boxes).
    Deletion and insertion also give their ``(B, n + 1)`` confidence curves, as
    ``curve_deletion`` and ``curve_insertion``.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]`` (``model_fn`` normalizes).
        maps: ``(B, H, W)`` in ``[0, 1]``.
        confidence: ``(B,)`` target confidences on the clean images.
    """
    assert spec.step is not None and spec.tolerance is not None
    out: dict[str, Tensor] = {}
    curves: dict[str, Tensor] = {}
    wanted = set(spec.compute)
    if wanted & {"average_drop", "increase_in_confidence"}:
        drop, increase = confidence_change(
            model_fn, images, maps, targets, softmax=spec.softmax, scores=confidence
        )
        out["average_drop"], out["increase_in_confidence"] = drop, increase
    for mode in ("deletion", "insertion"):
        if mode in wanted:
            substrate = spec.deletion_substrate if mode == "deletion" else spec.insertion_substrate
            curves[mode] = perturbation_curve(
                model_fn, images, maps, targets, mode=mode, step=spec.step, substrate=substrate,
                softmax=spec.softmax, blur_sigma=spec.blur_sigma,
            )  # fmt: skip
            out[mode] = auc(curves[mode])
    nan = torch.full((images.shape[0],), math.nan)
    if "pointing_game" in wanted:
        out["pointing_game"] = nan if boxes is None else pointing_game(maps, boxes, spec.tolerance)
    if "energy_pointing_game" in wanted:
        out["energy_pointing_game"] = nan if boxes is None else energy_pointing_game(maps, boxes)
    measured: dict[str, np.ndarray] = {n: out[n].double().cpu().numpy() for n in spec.compute}
    measured.update({f"curve_{k}": v.float().cpu().numpy() for k, v in curves.items()})
    return measured


def _ints(values: Tensor | None, count: int, width: int = 0) -> np.ndarray:
    if values is None:
        return np.full((count, width) if width else (count,), -1, dtype=np.int64)
    return values.cpu().numpy().astype(np.int64)


def _write_shard(
    folder: Path,
    shard: Shard,
    spec: MethodSpec,
    config: ExperimentConfig,
    batch: Batch,
    arrays: dict[str, np.ndarray],
) -> None:
    """Overlays first, then the shard file: a shard that exists is complete."""
    if config.output.overlays:
        for i, index in enumerate(batch.indices):
            picture = camkit.overlay(
                batch.images[i], arrays["maps"][i].astype(np.float32),
                alpha=config.output.alpha, cmap=config.output.colormap,
            )  # fmt: skip
            for fmt in config.output.formats:
                path = folder / "overlays" / str(spec.id) / f"{index:06d}.{fmt}"
                files.write_image(path, picture)
    files.write_npz(shard.file(folder, str(spec.id)), arrays)


# -- merging -------------------------------------------------------------------------------


def load_shards(
    folder: Path, method: str, shards: list[Shard], with_maps: bool = False
) -> dict[str, np.ndarray]:
    """One method's shards concatenated in image order; the maps only when asked for, so
    merging a large run stays small in memory."""
    missing = [s.file(folder, method) for s in shards if not s.file(folder, method).exists()]
    if missing:
        raise ConfigError(
            f"{len(missing)} shard(s) of method {method!r} are missing (first: {missing[0]}); "
            "re-run the same config to compute them"
        )
    parts: dict[str, list[np.ndarray]] = {}
    for shard in shards:
        with np.load(shard.file(folder, method), allow_pickle=False) as data:
            for key in data.files:
                if with_maps or key != "maps":
                    parts.setdefault(key, []).append(data[key])
    return {key: np.concatenate(values) for key, values in parts.items()}


def merge(
    folder: Path,
    config: ExperimentConfig,
    source: Source,
    shards: list[Shard],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``metrics.csv``, ``summary.json`` and ``report.html`` from the shards."""
    from camkit.experiment import report

    results = {str(m.id): load_shards(folder, str(m.id), shards) for m in config.methods}
    files.write_text(folder / "metrics.csv", metrics_csv(config, results))
    summary = summarize(config, results)
    chance = baselines.load(folder, config, shards) if config.metrics.baselines else {}
    if chance:
        summary.setdefault("baselines", {}).update(baselines.summarize(config, chance))
    summary["run"] = {
        "camkit": camkit.__version__,
        "torch": torch.__version__,
        "device": config.device,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **(meta or {}),
    }
    files.write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    map_files = {method: [s.file(folder, method) for s in shards] for method in results}
    report.write(folder, config, source, results, chance, map_files, summary)


def metrics_csv(config: ExperimentConfig, results: dict[str, dict[str, np.ndarray]]) -> str:
    """One row per image and method; floats at full precision, empty where not applicable."""
    names = list(config.metrics.compute)
    header = ["index", "image", "method", "label", "predicted", "target", "confidence", *names]
    lines = [",".join(header)]
    for method, data in results.items():
        for row in range(len(data["index"])):
            label = int(data["label"][row])
            cells = [
                str(int(data["index"][row])),
                _csv_text(str(data["id"][row])),
                method,
                "" if label < 0 else str(label),
                str(int(data["predicted"][row])),
                str(int(data["target"][row])),
                _csv_float(data["confidence"][row]),
                *(_csv_float(data[f"metric_{n}"][row]) for n in names),
            ]
            lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def _csv_float(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def _csv_text(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def summarize(
    config: ExperimentConfig, results: dict[str, dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Per-method statistics (:func:`stats.describe`) of every metric, the best method per
    metric, each method's layers and seconds, and the centre baseline."""
    from camkit.metrics import centre_map

    def stat(values: np.ndarray) -> dict[str, Any]:
        return stats.describe(values, seed=config.seed)

    methods: dict[str, dict[str, Any]] = {
        method: {name: stat(data[f"metric_{name}"]) for name in config.metrics.compute}
        for method, data in results.items()
    }
    first = next(iter(results.values()))
    summary: dict[str, Any] = {"images": len(first["index"]), "methods": methods}
    summary["best"] = stats.best(methods)
    summary["layers"] = {
        m: stats.distinct(d["layers"]) for m, d in results.items() if "layers" in d
    }
    summary["seconds"] = {
        m: float(d["seconds"].sum()) for m, d in results.items() if "seconds" in d
    }
    labels = first["label"]
    if (labels >= 0).all():
        summary["model_accuracy"] = float((first["predicted"] == labels).mean())
    boxes = first["box"]
    pointing = [n for n in ("pointing_game", "energy_pointing_game") if n in config.metrics.compute]
    if pointing and (boxes >= 0).all():
        assert config.data.image_size is not None and not isinstance(config.data.image_size, int)
        height, width = config.data.image_size
        centre = centre_map(height, width).expand(len(boxes), height, width)
        box_tensor = torch.from_numpy(boxes)
        assert config.metrics.tolerance is not None
        values = {
            "pointing_game": pointing_game(centre, box_tensor, config.metrics.tolerance),
            "energy_pointing_game": energy_pointing_game(centre, box_tensor),
        }
        summary["baselines"] = {
            "centre": {name: stat(values[name].double().numpy()) for name in pointing}
        }
    return summary
