"""Merging a run: ``metrics.csv``, ``summary.json`` and ``report.html`` (with its pictures)
from the shards alone."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import camkit
from camkit.experiment import baselines, files, stats
from camkit.experiment.compute import SANITY
from camkit.experiment.config import ExperimentConfig, MetricsSpec
from camkit.experiment.data import Source, Subset
from camkit.experiment.plan import Shard, concatenate_shards
from camkit.metrics import centre_map, energy_pointing_game, pointing_game


def load_shards(folder: Path, method: str, shards: list[Shard]) -> dict[str, np.ndarray]:
    """One method's shards concatenated in image order, without the maps.

    Raises:
        OutputFolderError: a shard is missing or unreadable (a re-run computes it again).
    """
    paths = [shard.file(folder, method) for shard in shards]
    return concatenate_shards(paths, f"method {method!r}")


def merge(
    folder: Path,
    config: ExperimentConfig,
    source: Source,
    shards: list[Shard],
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``metrics.csv``, ``summary.json`` and ``report.html`` (and its pictures) from
    the shards of the methods and of the random baselines."""
    from camkit.experiment import report

    results = {str(m.id): load_shards(folder, str(m.id), shards) for m in config.methods}
    files.write_text(folder / "metrics.csv", metrics_csv(config.metrics.compute, results))
    assert config.data.image_size is not None and not isinstance(config.data.image_size, int)
    summary = summarize(config.metrics, config.data.image_size, results, seed=config.seed)
    chance = baselines.load(folder, shards) if config.metrics.baselines else {}
    if chance:
        found = baselines.summarize(config.metrics.compute, config.seed, chance)
        summary.setdefault("baselines", {}).update(found)
    summary["run"] = {
        "camkit": camkit.__version__,
        "torch": torch.__version__,
        "device": config.device,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **(meta or {}),
    }
    files.write_text(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    # the report shows the images that were not skipped
    kept = next(iter(results.values()))["index"]
    map_files = {method: [s.file(folder, method) for s in shards] for method in results}
    report.write(folder, config, Subset(source, kept.tolist()), results, chance, map_files, summary)


def metrics_csv(names: Sequence[str], results: dict[str, dict[str, np.ndarray]]) -> str:
    """One row per image and method with the metrics ``names``; floats at full precision,
    empty where not applicable. Written by :mod:`csv` (RFC 4180: quotes, ``\r\n`` line
    ends), with text cells that a spreadsheet would run as a formula prefixed by ``'``.

    Example:
        >>> row = {"index": np.array([0]), "id": np.array(["=x.png"]), "label": np.array([-1]),
        ...        "predicted": np.array([1]), "target": np.array([1]),
        ...        "confidence": np.array([0.5])}
        >>> metrics_csv([], {"cam": row}).splitlines()[1]
        "0,'=x.png,cam,,1,1,0.5"
    """
    buffer = io.StringIO()
    # the default "\r\n" line ends make the writer quote a "\r" inside a name too
    writer = csv.writer(buffer)
    writer.writerow(
        ["index", "image", "method", "label", "predicted", "target", "confidence", *names]
    )
    for method, data in results.items():
        for row in range(len(data["index"])):
            label = int(data["label"][row])
            writer.writerow(
                [
                    str(int(data["index"][row])),
                    _csv_text(str(data["id"][row])),
                    _csv_text(method),
                    "" if label < 0 else str(label),
                    str(int(data["predicted"][row])),
                    str(int(data["target"][row])),
                    _csv_float(data["confidence"][row]),
                    *(_csv_float(data[f"metric_{n}"][row]) for n in names),
                ]
            )
    return buffer.getvalue()


def _csv_float(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def _csv_text(text: str) -> str:
    """``text``, prefixed by ``'`` when it starts like a spreadsheet formula."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def summarize(
    metrics: MetricsSpec,
    image_size: tuple[int, int],
    results: dict[str, dict[str, np.ndarray]],
    seed: int = 0,
) -> dict[str, Any]:
    """Per-method statistics (:func:`~camkit.experiment.stats.describe`: mean, count, 95%
    bootstrap interval) of every metric, the best method per metric, each method's layers
    and seconds, the sanity checks' mean per step (``sanity_steps``: per method, the module
    randomized at each step and each check's means), the skipped images, and the centre
    baseline.

    Args:
        metrics: which metrics were computed, and the pointing game's tolerance.
        image_size: ``(H, W)`` of the maps.
        results: per method, the shards' arrays (without maps).
        seed: seeds the bootstrap's resampling.
    """

    def stat(values: np.ndarray) -> dict[str, Any]:
        return stats.describe(values, seed=seed)

    methods: dict[str, dict[str, Any]] = {
        method: {name: stat(data[f"metric_{name}"]) for name in metrics.compute}
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
    checks = [name for name in metrics.compute if name in SANITY]
    sanity = {
        method: {
            # every shard stores the same steps: the first shard's are all of them
            "layers": data["sanity_layers"][: data[f"steps_{checks[0]}"].shape[1]].tolist(),
            **{name: stats.step_means(data[f"steps_{name}"]) for name in checks},
        }
        for method, data in results.items()
        if checks and "sanity_layers" in data
    }
    if sanity:
        summary["sanity_steps"] = sanity
    if len(first.get("skipped_index", ())):
        summary["skipped"] = [
            {"index": int(i), "image": str(name), "reason": str(why)}
            for i, name, why in zip(
                first["skipped_index"], first["skipped_id"], first["skipped_reason"]
            )
        ]
    labels = first["label"]
    if (labels >= 0).all():
        summary["model_accuracy"] = float((first["predicted"] == labels).mean())
    boxes = first["box"]
    pointing = [n for n in ("pointing_game", "energy_pointing_game") if n in metrics.compute]
    if pointing and (boxes >= 0).all():
        height, width = image_size
        centre = centre_map(height, width).expand(len(boxes), height, width)
        box_tensor = torch.from_numpy(boxes)
        assert metrics.tolerance is not None
        values = {
            "pointing_game": pointing_game(centre, box_tensor, metrics.tolerance),
            "energy_pointing_game": energy_pointing_game(centre, box_tensor),
        }
        summary["baselines"] = {
            "centre": {name: stat(values[name].double().numpy()) for name in pointing}
        }
    return summary
