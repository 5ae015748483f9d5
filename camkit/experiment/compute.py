"""Computing one shard: explain a batch with one method, measure the maps, write the shard.

The method sees normalized inputs; the metrics perturb the ``[0, 1]`` images, so a zero
substrate is black whatever the normalization.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import camkit
from camkit.experiment import files
from camkit.experiment.config import MetricsSpec, OutputSpec, TargetChoice
from camkit.experiment.data import Batch
from camkit.metrics import (
    auc,
    confidence_change,
    energy_pointing_game,
    perturbation_curve,
    pointing_game,
    target_scores,
)


@dataclass
class NormalizingModel:
    """The model behind the normalization its ``[0, 1]`` images need; call it on such images.

    Example:
        >>> from camkit import zoo
        >>> from camkit.experiment.models import Normalize
        >>> wrapped = NormalizingModel(zoo.load_model("shapes-cnn"), Normalize((0,) * 3, (1,) * 3))
        >>> wrapped(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 4])
    """

    model: nn.Module
    normalize: nn.Module

    def __call__(self, images: Tensor) -> Tensor:
        return self.model(self.normalize(images))


def explain(
    extractor: camkit.Extractor,
    model: NormalizingModel,
    batch: Batch,
    *,
    targets: TargetChoice,
    metrics: MetricsSpec,
    map_dtype: str,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Maps, predictions and per-image metrics of one method on one batch: a shard's arrays,
    with the deletion and insertion curves (``curve_<name>``), the layers the method used
    (``layers``) and the seconds it took to the maps on the CPU (``seconds``, one value).

    Args:
        targets: ``"predicted"``, ``"label"`` (the batch's labels) or one class index.
        map_dtype: the numpy dtype the maps are stored in.
    """
    skipped = {
        "skipped_index": np.asarray([i for i, _, _ in batch.skipped], dtype=np.int64),
        "skipped_id": np.asarray([name for _, name, _ in batch.skipped], dtype=str),
        "skipped_reason": np.asarray([why for _, _, why in batch.skipped], dtype=str),
    }
    if not batch.indices:  # every image of the shard was skipped
        return {**_no_images(metrics, batch.images.shape[2:], map_dtype), **skipped}
    images = batch.images.to(device)
    wanted: Any = None
    if targets == "label":
        assert batch.labels is not None
        wanted = batch.labels.to(device)
    elif isinstance(targets, int):
        wanted = targets
    started = time.perf_counter()
    result = extractor(model.normalize(images), targets=wanted)
    maps = result.maps.detach().float()
    stored = maps.cpu().numpy().astype(map_dtype)  # waits for the device
    seconds = time.perf_counter() - started
    chosen = result.targets.to(device)
    confidence = target_scores(model, images, chosen, softmax=metrics.softmax)
    count = len(batch.indices)
    arrays: dict[str, np.ndarray] = {
        "index": np.asarray(batch.indices, dtype=np.int64),
        "id": np.asarray(batch.ids),
        "label": _ints(batch.labels, count),
        "box": _ints(batch.boxes, count, width=4),
        "predicted": result.scores.argmax(1).cpu().numpy().astype(np.int64),
        "target": result.targets.cpu().numpy().astype(np.int64),
        "confidence": confidence.double().numpy(),
        "maps": stored,
        "seconds": np.asarray([seconds]),
        "layers": np.asarray(result.layers, dtype=str),
    }
    measured = measure(metrics, model, images, maps, chosen, batch.boxes, confidence)
    arrays.update({stored_name(k): v for k, v in measured.items()})
    return {**arrays, **skipped}


def stored_name(name: str) -> str:
    """The key of :func:`measure`'s ``name`` in a shard: ``metric_<name>``, curves as they are.

    Example:
        >>> stored_name("deletion"), stored_name("curve_deletion")
        ('metric_deletion', 'curve_deletion')
    """
    return name if name.startswith("curve_") else f"metric_{name}"


def curve_names(metrics: MetricsSpec) -> list[str]:
    """The curves :func:`measure` gives for ``metrics``: ``curve_deletion``, ``curve_insertion``.

    Example:
        >>> from camkit.experiment.config import MetricsSpec
        >>> curve_names(MetricsSpec(compute=["insertion", "pointing_game"]))
        ['curve_insertion']
    """
    return [f"curve_{mode}" for mode in ("deletion", "insertion") if mode in metrics.compute]


def no_measures(metrics: MetricsSpec, size: Sequence[int]) -> dict[str, np.ndarray]:
    """The metric and curve arrays (shard keys) of a shard that holds no image.

    Args:
        size: ``(H, W)`` of the images, which fixes the curves' ``n + 1`` points.
    """
    assert metrics.step is not None
    points = -(-size[0] * size[1] // metrics.step) + 1
    return {
        **{f"metric_{name}": np.zeros(0) for name in metrics.compute},
        **{name: np.zeros((0, points), dtype=np.float32) for name in curve_names(metrics)},
    }


def _no_images(metrics: MetricsSpec, size: Sequence[int], map_dtype: str) -> dict[str, np.ndarray]:
    """The arrays of a shard that holds no image."""
    ints = np.zeros(0, dtype=np.int64)
    return {
        "index": ints, "id": np.zeros(0, dtype=str), "label": ints,
        "box": np.zeros((0, 4), dtype=np.int64), "predicted": ints, "target": ints,
        "confidence": np.zeros(0), "maps": np.zeros((0, *size), dtype=map_dtype),
        "seconds": np.zeros(1), "layers": np.zeros(0, dtype=str),
        **no_measures(metrics, size),
    }  # fmt: skip


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


def write_shard(
    path: Path,
    overlays: Path,
    batch: Batch,
    arrays: dict[str, np.ndarray],
    output: OutputSpec,
) -> None:
    """Overlays (into the folder ``overlays``, when ``output.overlays``) first, then the
    shard file at ``path``: a shard that exists is complete."""
    if output.overlays:
        for i, index in enumerate(batch.indices):
            picture = camkit.overlay(
                batch.images[i], arrays["maps"][i].astype(np.float32),
                alpha=output.alpha, cmap=output.colormap,
            )  # fmt: skip
            for fmt in output.formats:
                files.write_image(overlays / f"{index:06d}.{fmt}", picture)
    files.write_npz(path, arrays)
