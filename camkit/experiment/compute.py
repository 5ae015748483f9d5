"""Computing one shard: explain a batch with one method, measure the maps, write the shard.

The method sees normalized inputs; the metrics perturb the ``[0, 1]`` images, so a zero
substrate is black whatever the normalization (ROAD imputes, and the map-multiplied images
of average drop, ``cam_mult_confidence_change`` and ARCC's coherency are taken, in ``[0, 1]``
pixel values, before the normalization).

ROAD's noise (and ARCC's, which holds a ROAD) is drawn image by image from the stream
:func:`noise_generator` ``(seed, image index, metric)``, so a value is the same whatever the
batch size, shard or process, and whichever other metrics are computed.
"""

from __future__ import annotations

import functools
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
from camkit.errors import ConfigError, did_you_mean
from camkit.experiment import files
from camkit.experiment.config import MethodSpec, MetricsSpec, OutputSpec, TargetChoice, quote
from camkit.experiment.data import Batch
from camkit.experiment.task import Task, ground_truth_of, outline
from camkit.metrics import (
    RandomizationResult,
    arcc,
    auc,
    cam_mult_confidence_change,
    confidence_change,
    energy_pointing_game,
    model_randomization,
    perturbation_curve,
    pointing_game,
    road,
    target_scores,
)
from camkit.metrics.imputation import Order
from camkit.metrics.sanity import Mode, parameter_layers

#: The random streams of the metrics that draw noise (see :func:`noise_generator`).
NOISY = ("road_morf", "road_lerf", "arcc")
ORDERS: tuple[Order, ...] = ("morf", "lerf")
#: The sanity checks' metrics: ``sanity_<mode>_<similarity>``.
MODES: tuple[Mode, ...] = ("cascading", "independent")
SANITY = {
    f"sanity_{mode}_{similarity}": (mode, similarity)
    for mode in MODES
    for similarity in ("spearman", "ssim")
}
ARCC_PARTS = ("arcc", "arcc_coherency", "arcc_complexity", "arcc_confidence")


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


@dataclass
class Rerun:
    """How the metrics that explain again reach the maps' maker: ARCC's coherency explains
    the map-multiplied images, the sanity checks the batch under a randomized model.

    Attributes:
        explain: ``explain(images, targets, indices)``: ``(B, H, W)`` maps in ``[0, 1]`` of
            ``(B, 3, H, W)`` images in ``[0, 1]`` (data indices ``indices``) and ``(B,)``
            targets.
        randomization: ``randomization(mode)``: the batch's sanity check in ``mode``.
    """

    explain: Callable[[Tensor, Tensor, Sequence[int]], Tensor]
    randomization: Callable[[Mode], RandomizationResult]


def method_rerun(
    spec: MethodSpec,
    extractor: camkit.Extractor,
    model: NormalizingModel,
    images: Tensor,
    targets: Tensor,
    metrics: MetricsSpec,
) -> Rerun:
    """The :class:`Rerun` of a method: ``extractor`` for coherency; for the sanity checks,
    the method made afresh on each randomized copy of the model, explaining ``images``
    (``(B, 3, H, W)`` in ``[0, 1]``) for the trained model's ``targets``.

    Example:
        >>> from camkit import zoo
        >>> from camkit.experiment.config import MethodSpec, MetricsSpec
        >>> from camkit.experiment.models import Normalize
        >>> net = zoo.load_model("shapes-cnn")
        >>> model = NormalizingModel(net, Normalize((0,) * 3, (1,) * 3))
        >>> cam = camkit.create("gradcam", net, "features")
        >>> spec, metrics = MethodSpec(name="gradcam", layer="features"), MetricsSpec()
        >>> x, t = torch.rand(2, 3, 64, 64), torch.tensor([0, 1])
        >>> check = method_rerun(spec, cam, model, x, t, metrics).randomization("cascading")
        >>> check.layers[:2], tuple(check.ssim.shape)
        (['fc', 'features.4'], (9, 2))
    """

    def again(x: Tensor, wanted: Tensor, _: Sequence[int]) -> Tensor:
        return extractor(model.normalize(x), targets=wanted).maps

    def maps_of(network: nn.Module) -> Tensor:
        # The method as the run made it: its config and its run options (progress off).
        options = {**spec.options, **extractor.options.model_dump()}
        method = camkit.create(spec.name, network, spec.layer, **options)
        return method(model.normalize(images), targets=targets).maps

    def randomization(mode: Mode) -> RandomizationResult:
        return model_randomization(
            model.model, maps_of, mode=mode, layers=sanity_steps(metrics, model.model),
            seed=metrics.sanity_seed,
        )  # fmt: skip

    return Rerun(again, randomization)


def sanity_steps(metrics: MetricsSpec, network: nn.Module) -> list[str]:
    """The modules the sanity checks randomize, one per step: ``metrics.sanity_layers`` or
    every module that owns parameters, output first.

    Raises:
        ConfigError: ``metrics.sanity_layers`` names a module the model does not have.

    Example:
        >>> from camkit.experiment.config import MetricsSpec
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2))
        >>> sanity_steps(MetricsSpec(), net), sanity_steps(MetricsSpec(sanity_layers=["0"]), net)
        (['2', '0'], ['0'])
    """
    if metrics.sanity_layers is None:
        return parameter_layers(network)
    names = [name for name, _ in network.named_modules() if name]
    for name in metrics.sanity_layers:
        if name not in names:
            raise ConfigError(
                f"metrics.sanity_layers: the model has no module {quote(name)}."
                f"{did_you_mean(name, names)} Modules that own parameters, output first: "
                f"{', '.join(parameter_layers(network)[:12])}"
            )
    return list(metrics.sanity_layers)


def noise_generator(seed: int, index: int, metric: str) -> torch.Generator:
    """The random source of image ``index``'s noise in ``metric`` (one of :data:`NOISY`):
    a CPU generator seeded from ``(seed, index, metric)``, independent of the batch.

    Example:
        >>> a, b = noise_generator(0, 7, "road_morf"), noise_generator(0, 7, "road_morf")
        >>> bool(torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b)))
        True
    """
    state = np.random.SeedSequence([seed, index, NOISY.index(metric)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def explain(
    extractor: camkit.Extractor,
    model: NormalizingModel,
    batch: Batch,
    *,
    targets: TargetChoice,
    metrics: MetricsSpec,
    map_dtype: str,
    device: torch.device,
    seed: int = 0,
    spec: MethodSpec | None = None,
    task: Task | None = None,
) -> dict[str, np.ndarray]:
    """Maps, predictions and per-image metrics of one method on one batch: a shard's arrays,
    with the deletion and insertion curves (``curve_<name>``), the layers the method used
    (``layers``) and the seconds it took to the maps on the CPU (``seconds``, one value);
    with sanity checks, their per-step values (``steps_<name>``, ``(B, S)``) and the module
    randomized at each step (``sanity_layers``, ``(S,)``).

    Args:
        targets: ``"predicted"``, ``"label"`` (the batch's labels) or one class index.
        map_dtype: the numpy dtype the maps are stored in.
        seed: the run's seed, which seeds ROAD's noise.
        spec: the method's entry in the config (``extractor``'s maker), which the sanity
            checks need to make the method again on a randomized model.
        task: the run's ``[task]`` when not classification: it chooses the targets
            (``targets`` is then read through it) and measures the maps; detection shards
            also hold the explained boxes (``explained_box``, ``(B, 4)`` floats).
    """
    checked = set(SANITY) & set(metrics.compute)
    steps = sanity_steps(metrics, model.model) if checked else None
    if checked and spec is None:
        raise ValueError("the sanity checks need the method's spec to make it again")
    skipped = {
        "skipped_index": np.asarray([i for i, _, _ in batch.skipped], dtype=np.int64),
        "skipped_id": np.asarray([name for _, name, _ in batch.skipped], dtype=str),
        "skipped_reason": np.asarray([why for _, _, why in batch.skipped], dtype=str),
    }
    if not batch.indices:  # every image of the shard was skipped
        empty = _no_images(metrics, batch.images.shape[2:], map_dtype, steps)
        if task is not None and task.kind == "detection":
            empty["explained_box"] = np.zeros((0, 4), dtype=np.float32)
        return {**empty, **skipped}
    images = batch.images.to(device)
    if task is not None and task.kind != "classification":
        return {**_explain_task(extractor, model, batch, images, task, metrics, map_dtype, seed),
                **skipped}  # fmt: skip
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
    rerun = None
    if spec is not None:
        rerun = method_rerun(spec, extractor, model, images, chosen, metrics)
    measured = measure(
        metrics, model, images, maps, chosen, batch.boxes, confidence,
        indices=batch.indices, seed=seed, rerun=rerun,
    )  # fmt: skip
    arrays.update({stored_name(k): v for k, v in measured.items()})
    if steps is not None:
        arrays["sanity_layers"] = np.asarray(steps, dtype=str)
    return {**arrays, **skipped}


def _explain_task(
    extractor: camkit.Extractor,
    model: NormalizingModel,
    batch: Batch,
    images: Tensor,
    task: Task,
    metrics: MetricsSpec,
    map_dtype: str,
    seed: int,
) -> dict[str, np.ndarray]:
    """:func:`explain` for a ``[task]`` other than classification."""
    prepared = task.prepare(model, batch, images)
    started = time.perf_counter()
    result = extractor(model.normalize(images), targets=prepared.targets)
    maps = result.maps.detach().float()
    stored = maps.cpu().numpy().astype(map_dtype)  # waits for the device
    seconds = time.perf_counter() - started
    count = len(batch.indices)
    arrays: dict[str, np.ndarray] = {
        "index": np.asarray(batch.indices, dtype=np.int64),
        "id": np.asarray(batch.ids),
        "label": _ints(task.labels(batch), count),
        "box": _ints(batch.boxes, count, width=4),
        "predicted": prepared.predicted.numpy().astype(np.int64),
        "target": prepared.classes.numpy().astype(np.int64),
        "confidence": prepared.clean.double().numpy(),
        "maps": stored,
        "seconds": np.asarray([seconds]),
        "layers": np.asarray(result.layers, dtype=str),
    }
    if prepared.boxes is not None:
        arrays["explained_box"] = prepared.boxes.numpy().astype(np.float32)
    measured = task.measure(
        metrics, model, images, maps, prepared, indices=batch.indices, seed=seed
    )
    arrays.update({stored_name(k): v for k, v in measured.items()})
    return arrays


def stored_name(name: str) -> str:
    """The key of :func:`measure`'s ``name`` in a shard: ``metric_<name>``, curves and
    steps as they are.

    Example:
        >>> stored_name("deletion"), stored_name("curve_deletion")
        ('metric_deletion', 'curve_deletion')
    """
    return name if name.startswith(("curve_", "steps_")) else f"metric_{name}"


def curve_names(metrics: MetricsSpec) -> list[str]:
    """The curves :func:`measure` gives for ``metrics``: ``curve_deletion``, ``curve_insertion``.

    Example:
        >>> from camkit.experiment.config import MetricsSpec
        >>> curve_names(MetricsSpec(compute=["insertion", "pointing_game"]))
        ['curve_insertion']
    """
    return [f"curve_{mode}" for mode in ("deletion", "insertion") if mode in metrics.compute]


def no_measures(
    metrics: MetricsSpec, size: Sequence[int], steps: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The metric and curve arrays (shard keys) of a shard that holds no image.

    Args:
        size: ``(H, W)`` of the images, which fixes the curves' ``n + 1`` points.
        steps: the sanity checks' steps, which fix their per-step arrays (``None``: none
            are stored).
    """
    assert metrics.step is not None
    points = -(-size[0] * size[1] // metrics.step) + 1
    wanted = [name for name in SANITY if name in metrics.compute]
    return {
        **{f"metric_{name}": np.zeros(0) for name in metrics.compute},
        **{name: np.zeros((0, points), dtype=np.float32) for name in curve_names(metrics)},
        **{f"steps_{n}": np.zeros((0, len(steps))) for n in wanted if steps is not None},
        **({"sanity_layers": np.asarray(steps, dtype=str)} if steps is not None else {}),
    }


def _no_images(
    metrics: MetricsSpec, size: Sequence[int], map_dtype: str, steps: Sequence[str] | None
) -> dict[str, np.ndarray]:
    """The arrays of a shard that holds no image."""
    ints = np.zeros(0, dtype=np.int64)
    return {
        "index": ints, "id": np.zeros(0, dtype=str), "label": ints,
        "box": np.zeros((0, 4), dtype=np.int64), "predicted": ints, "target": ints,
        "confidence": np.zeros(0), "maps": np.zeros((0, *size), dtype=map_dtype),
        "seconds": np.zeros(1), "layers": np.zeros(0, dtype=str),
        **no_measures(metrics, size, steps),
    }  # fmt: skip


def measure(
    spec: MetricsSpec,
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    boxes: Tensor | None,
    confidence: Tensor,
    *,
    indices: Sequence[int],
    seed: int,
    rerun: Rerun | None = None,
) -> dict[str, np.ndarray]:
    """Every metric of ``spec.compute`` per image; NaN where it does not apply (no boxes;
    no ``rerun`` for ARCC's coherency and the sanity checks). Deletion and insertion also
    give their ``(B, n + 1)`` confidence curves, as ``curve_deletion`` and
    ``curve_insertion``; the sanity checks their ``(B, S)`` values after each step, as
    ``steps_<name>``, the metric being the last step's (the fully randomized model's for
    ``cascading``).

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]`` (``model_fn`` normalizes).
        maps: ``(B, H, W)`` in ``[0, 1]``.
        confidence: ``(B,)`` target confidences on the clean images.
        indices: the images' indices in the data, which seed ROAD's noise.
        seed: the run's seed, which seeds ROAD's noise.
        rerun: how to explain again (see :class:`Rerun`).
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
    if "cam_mult_confidence_change" in wanted:
        out["cam_mult_confidence_change"] = cam_mult_confidence_change(
            model_fn, images, maps, targets, softmax=spec.softmax, scores=confidence
        )
    out.update(_road(spec, model_fn, images, maps, targets, confidence, indices, seed))
    if wanted & set(ARCC_PARTS):
        parts = _arcc(spec, model_fn, images, maps, targets, indices, seed, rerun)
        out.update(zip(ARCC_PARTS, parts))
    steps: dict[str, Tensor] = {}
    for mode in MODES:
        names = [n for n, (m, _) in SANITY.items() if m == mode and n in wanted]
        if names:
            checked = None if rerun is None else rerun.randomization(mode)
            for name in names:
                similarity = None if checked is None else getattr(checked, SANITY[name][1])
                if similarity is None or not len(similarity):
                    out[name] = nan
                    continue
                out[name] = similarity[-1]
                steps[name] = similarity.T
    measured: dict[str, np.ndarray] = {n: out[n].double().cpu().numpy() for n in spec.compute}
    measured.update({f"curve_{k}": v.float().cpu().numpy() for k, v in curves.items()})
    measured.update({f"steps_{k}": v.double().cpu().numpy() for k, v in steps.items()})
    return measured


def _road(
    spec: MetricsSpec,
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    confidence: Tensor,
    indices: Sequence[int],
    seed: int,
) -> dict[str, Tensor]:
    """``road_morf``, ``road_lerf`` and ``road_combined`` as far as ``spec`` asks, image by
    image (each from its own noise stream)."""
    wanted = set(spec.compute)
    out: dict[str, Tensor] = {}
    for order in ORDERS:
        if not wanted & {f"road_{order}", "road_combined"}:
            continue
        name = f"road_{order}"
        out[name] = torch.cat([
            road(
                model_fn, images[i : i + 1], maps[i : i + 1], targets[i : i + 1], order=order,
                removed=spec.road_removed, noise=spec.road_noise, softmax=spec.softmax,
                generator=noise_generator(seed, index, name), scores=confidence[i : i + 1],
            ).cpu()
            for i, index in enumerate(indices)
        ])  # fmt: skip
    if "road_combined" in wanted:
        out["road_combined"] = (out["road_lerf"] - out["road_morf"]) / 2
    return out


def _arcc(
    spec: MetricsSpec,
    model_fn: Callable[[Tensor], Any],
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    indices: Sequence[int],
    seed: int,
    rerun: Rerun | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ARCC and its coherency, complexity and confidence parts, image by image (each from
    its own noise stream); NaN without ``rerun`` (nothing to explain again)."""
    if rerun is None:
        nan = torch.full((images.shape[0],), math.nan)
        return nan, nan, nan, nan
    scores = []
    for i, index in enumerate(indices):
        explain_again = functools.partial(_explain_one, rerun, index)
        scores.append(
            arcc(
                model_fn, explain_again, images[i : i + 1], maps[i : i + 1],
                targets[i : i + 1], removed=spec.arcc_removed, noise=spec.road_noise,
                softmax=spec.softmax, generator=noise_generator(seed, index, "arcc"),
            )
        )  # fmt: skip
    parts = [torch.cat([score[k].cpu() for score in scores]) for k in range(4)]
    return parts[0], parts[1], parts[2], parts[3]


def _explain_one(rerun: Rerun, index: int, images: Tensor, targets: Tensor) -> Tensor:
    return rerun.explain(images, targets, [index])


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
    task: str = "classification",
) -> None:
    """Overlays (into the folder ``overlays``, when ``output.overlays``) first, then the
    shard file at ``path``: a shard that exists is complete. Other ``task`` kinds than
    classification draw the ground truth (and the explained box) on the overlays."""
    if output.overlays:
        for i, index in enumerate(batch.indices):
            picture = camkit.overlay(
                batch.images[i], arrays["maps"][i].astype(np.float32),
                alpha=output.alpha, cmap=output.colormap,
            )  # fmt: skip
            if task != "classification":
                picture = outline(picture, **ground_truth_of(task, batch.masks, arrays, i))
            for fmt in output.formats:
                files.write_image(overlays / f"{index:06d}.{fmt}", picture)
    files.write_npz(path, arrays)
