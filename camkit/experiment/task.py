"""``[task]``: the score each map explains and the metrics measure, for models that are not
single-label classifiers.

Per batch, :meth:`Task.prepare` reads the clean output once and fixes one target per image
(docs/tasks.md, "Tasks in config files"):

- ``detection``: :class:`MatchedBox`, the best ``score * IoU`` of a detected box of the
  explained class overlapping the explained box by at least ``task.iou``; the explained box
  is the top-scoring detection of the clean image (``box = "top"``) or the ground-truth box
  (``"ground-truth"``).
- ``segmentation``: :class:`RegionTarget`, the summed logit of the class inside the
  ground-truth mask of the class or the region predicted as the class on the clean image
  (explained), and the class's mean softmax probability there (:class:`RegionProbability`,
  measured, with ``metrics.softmax``).
- ``multilabel``: the label's logit (explained) and its sigmoid (measured, with
  ``metrics.softmax``).
- ``embedding``: :class:`~camkit.targets.SimilarityTarget` to the image's own clean
  embedding or to the mean embedding of ``task.reference`` images.

:meth:`Task.measure` measures each image on that target: deletion, insertion, average drop,
increase in confidence and ROAD through a model that returns the target's score, pointing
game and energy inside the ground-truth box (detection, any task on ``camkit:shapes``) or
mask (segmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from camkit.engine.outputs import scores_of
from camkit.errors import ConfigError, TargetError
from camkit.experiment.config import ExperimentConfig, MetricsSpec, TargetChoice, TaskSpec
from camkit.experiment.data import Batch
from camkit.metrics import mask_energy, mask_pointing_game
from camkit.metrics.localization import box_masks
from camkit.targets import ClassTarget, SimilarityTarget, box_iou

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class MatchedBox:
    r"""A detector's score for one box: over the detected boxes :math:`j` of class :math:`c`
    whose IoU with the reference box :math:`r` is at least :math:`t`,

    .. math:: s = \max_{j \,:\, \ell_j = c,\ \mathrm{IoU}(b_j, r) \ge t} p_j\, \mathrm{IoU}(b_j, r)

    and 0 when there is none (:class:`camkit.targets.DetectionTarget` with a threshold).

    Args:
        boxes: ``(B, 4)`` reference boxes, one per image.
        classes: ``(B,)`` classes.
        iou: the threshold :math:`t`.
    """

    def __init__(self, boxes: Tensor, classes: Tensor, iou: float) -> None:
        self.boxes, self.classes, self.iou = boxes.detach().float(), classes.long(), iou

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.dim() != 3 or scores.shape[2] != 6:
            raise TargetError(
                "task.kind = 'detection' needs a detector (a list of dicts with boxes, scores "
                f"and labels per image); the model's scores have shape {tuple(scores.shape)}"
            )
        index = index.to(self.boxes.device)
        box = self.boxes[index].to(scores.device, scores.dtype)
        classes = self.classes[index].to(scores.device)
        overlap = box_iou(scores[..., :4], box)
        keep = (scores[..., 5].round().long() == classes[:, None]) & (overlap >= self.iou)
        match = scores[..., 4] * overlap * keep
        return torch.cat([match, match.new_zeros(match.shape[0], 1)], 1).amax(1)


class RegionTarget:
    r"""The summed logit of each image's class inside its region, for ``(N, K, H, W)``
    outputs: :math:`s = \sum_{i,j} M(i, j)\, Y^{(c)}(i, j)`.

    Args:
        classes: ``(B,)`` classes.
        regions: ``(B, H, W)`` boolean regions at the output's resolution.
    """

    def __init__(self, classes: Tensor, regions: Tensor) -> None:
        self.classes, self.regions = classes.long(), regions.detach()

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.dim() != 4 or scores.shape[-2:] != self.regions.shape[-2:]:
            raise TargetError(
                "task.kind = 'segmentation' needs (N, classes, H, W) outputs at the regions' "
                f"{tuple(self.regions.shape[-2:])}; the model's scores have shape "
                f"{tuple(scores.shape)}"
            )
        index = index.to(self.classes.device)
        classes = self.classes[index].to(scores.device)
        if bool((classes >= scores.shape[1]).any()):
            raise TargetError(
                f"class {int(classes.max())} is out of range: the segmenter has "
                f"{scores.shape[1]} classes"
            )
        rows = torch.arange(scores.shape[0], device=scores.device)
        region = self.regions[index].to(scores.device, scores.dtype)
        return (scores[rows, classes] * region).sum((1, 2))


class RegionProbability(RegionTarget):
    r"""The mean softmax probability of each image's class inside its region (0 for an
    empty region): how a segmentation target is measured with ``metrics.softmax``,
    :math:`s = \frac{1}{|M|} \sum_{(i,j) \in M} \mathrm{softmax}(Y)^{(c)}(i, j)`."""

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        total = super().__call__(scores.softmax(1), index)
        size = self.regions[index.to(self.regions.device)].flatten(1).sum(1)
        return total / size.clamp(min=1).to(total.device, total.dtype)


class _Probability:
    """A multi-label target measured as its sigmoid probability."""

    def __init__(self, target: ClassTarget) -> None:
        self.target = target

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        return self.target(scores, index).sigmoid()


@dataclass
class Prepared:
    """One batch's targets.

    Attributes:
        targets: what the extractor explains (a callable target).
        score: what the metrics measure, ``score(scores, index) -> (N,)``.
        classes: ``(B,)`` the class explained (``-1``: none, embeddings).
        predicted: ``(B,)`` the model's class (``-1`` where the task has none).
        regions: ``(B, H, W)`` ground-truth regions of localization, or ``None``.
        boxes: ``(B, 4)`` the explained boxes (detection), or ``None``.
        clean: ``(B,)`` the measured score of the clean images.
    """

    targets: Any
    score: ScoreFn
    classes: Tensor
    predicted: Tensor
    regions: Tensor | None
    boxes: Tensor | None
    clean: Tensor


class Task:
    """The ``[task]`` of a run: prepares each batch's targets and measures its maps.

    Args:
        spec: the ``[task]`` section.
        targets: the config's ``targets`` (segmentation, multilabel).
        embedded: the data is ``camkit:shapes``, whose classes count from 1 in detection
            and segmentation (0 is background).
        reference: the concept embedding ``(D,)`` (``task.reference`` images), or ``None``.
        softmax: ``metrics.softmax``: measure a multi-label target as its sigmoid and a
            segmentation target as the mean softmax probability in the region, not as the
            logit (sum) they explain.
    """

    def __init__(
        self,
        spec: TaskSpec,
        targets: TargetChoice = "predicted",
        embedded: bool = False,
        reference: Tensor | None = None,
        softmax: bool = True,
    ) -> None:
        self.spec, self.targets, self.embedded, self.reference = spec, targets, embedded, reference
        self.softmax = softmax

    @property
    def kind(self) -> str:
        return self.spec.kind

    def labels(self, batch: Batch) -> Tensor | None:
        """The images' ground-truth classes as the task counts them: ``camkit:shapes``
        labels shifted by one in detection and segmentation (0 is the background)."""
        if batch.labels is None:
            return None
        shift = self.embedded and self.kind in ("detection", "segmentation")
        return batch.labels + 1 if shift else batch.labels

    def prepare(self, model: Callable[[Tensor], Any], batch: Batch, images: Tensor) -> Prepared:
        """The targets of ``batch`` (``images``: its ``[0, 1]`` images on the device) from
        the clean output of ``model`` (which normalizes).

        Raises:
            TargetError: an image has nothing to explain (no detection, an empty region).
        """
        with torch.no_grad():
            out = scores_of(model(images)).detach()
        count = images.shape[0]
        none = torch.full((count,), -1, dtype=torch.long)
        rows = torch.arange(count)
        height, width = images.shape[-2:]
        regions = None
        if batch.boxes is not None:
            regions = box_masks(batch.boxes.cpu(), height, width)
        boxes = None
        if self.kind == "multilabel":
            classes = self._classes(out, batch)
            targets: Any = ClassTarget(classes)
            score: ScoreFn = _Probability(targets) if self.softmax else targets
            predicted = out.argmax(1).cpu()
        elif self.kind == "detection":
            boxes, classes = self._box(out, batch)
            targets = score = MatchedBox(boxes, classes, float(self.spec.iou or 0.0))
            predicted = none
        elif self.kind == "segmentation":
            if out.dim() != 4:
                raise TargetError(
                    "task.kind = 'segmentation' needs (B, classes, H, W) outputs (or a dict "
                    f"with 'out'); the model's scores have shape {tuple(out.shape)}"
                )
            classes = self._classes(out, batch)
            chosen = self._region(out, batch, classes)
            targets = score = RegionTarget(classes, chosen)
            if self.softmax:
                score = RegionProbability(classes, chosen)
            predicted = none
            if batch.masks is not None:
                regions = batch.masks.cpu() == classes[:, None, None]
        else:
            reference = self.reference
            if reference is None:
                reference = out.flatten(1)
            targets = score = SimilarityTarget(reference)
            classes = predicted = none
        clean = score(out, rows.to(out.device)).detach().float().cpu()
        return Prepared(targets, score, classes, predicted, regions, boxes, clean)

    def _classes(self, out: Tensor, batch: Batch) -> Tensor:
        count = out.shape[0]
        if isinstance(self.targets, int):
            return torch.full((count,), self.targets, dtype=torch.long)
        if self.kind == "multilabel":
            if self.targets == "label":
                assert batch.labels is not None
                return batch.labels.cpu().long()
            return out.argmax(1).cpu()
        if self.targets == "label":
            labels = self.labels(batch)
            if labels is not None:
                return labels.cpu().long()
            assert batch.masks is not None
            return torch.stack([_most_frequent(m, batch.ids[i]) for i, m in enumerate(batch.masks)])
        predicted = out.argmax(1).flatten(1).cpu()
        counts = torch.stack([torch.bincount(p, minlength=out.shape[1]) for p in predicted])
        if out.shape[1] > 1:
            counts[:, 0] = -1  # the most frequent class other than the background
        return counts.argmax(1)

    def _region(self, out: Tensor, batch: Batch, classes: Tensor) -> Tensor:
        if self.spec.region == "predicted":
            return out.argmax(1).cpu() == classes[:, None, None]
        assert batch.masks is not None
        masks = batch.masks.cpu()
        if masks.shape[-2:] != out.shape[-2:]:
            masks = F.interpolate(masks[:, None].float(), size=out.shape[-2:], mode="nearest")[:, 0]
            masks = masks.long()
        return masks == classes[:, None, None]

    def _box(self, out: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        if out.dim() != 3 or out.shape[2] != 6:
            raise TargetError(
                "task.kind = 'detection' needs a detector (a list of dicts with boxes, scores "
                f"and labels per image); the model's scores have shape {tuple(out.shape)}"
            )
        if self.spec.box == "ground-truth":
            labels = self.labels(batch)
            assert batch.boxes is not None and labels is not None
            return batch.boxes.cpu().float(), labels.cpu().long()
        found = out[..., 4].masked_fill(out[..., 5] < 0, -math.inf)
        if out.shape[1] == 0 or bool(torch.isinf(found.amax(1)).any()):
            first = 0 if out.shape[1] == 0 else int(torch.isinf(found.amax(1)).nonzero()[0, 0])
            raise TargetError(
                f"the detector finds no box on image {batch.ids[first]} to explain "
                "(task.box = 'top'); lower its score threshold (model.kwargs."
                "box_score_thresh) or set task.box = 'ground-truth'"
            )
        top = found.argmax(1).cpu()
        rows = torch.arange(out.shape[0])
        best = out.cpu()[rows, top]
        return best[:, :4].float(), best[:, 5].round().long()

    def measure(
        self,
        spec: MetricsSpec,
        model: Callable[[Tensor], Any],
        images: Tensor,
        maps: Tensor,
        prepared: Prepared,
        *,
        indices: Sequence[int],
        seed: int,
    ) -> dict[str, np.ndarray]:
        """Every metric of ``spec.compute`` per image on the prepared target, with the
        deletion and insertion curves (:func:`camkit.experiment.compute.measure`'s keys)."""
        from camkit.experiment.compute import measure  # it imports this module

        assert spec.tolerance is not None
        plain = spec.model_copy(update={"softmax": False})  # the score is measured as it is
        parts: list[dict[str, np.ndarray]] = []
        for i, index in enumerate(indices):
            one = _ScoreModel(model, prepared.score, i)
            parts.append(
                measure(
                    plain, one, images[i : i + 1], maps[i : i + 1],
                    torch.zeros(1, dtype=torch.long, device=images.device), None,
                    prepared.clean[i : i + 1], indices=[index], seed=seed,
                )
            )  # fmt: skip
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        regions = prepared.regions
        for name, fn in (("pointing_game", _pointing), ("energy_pointing_game", _energy)):
            if name in out:
                value = fn(maps.cpu(), regions, spec.tolerance)
                out[name] = value.double().numpy()
        return out


class _ScoreModel:
    """A model that returns image ``i``'s target score as one column, for every row."""

    def __init__(self, model: Callable[[Tensor], Any], score: ScoreFn, image: int) -> None:
        self.model, self.score, self.image = model, score, image

    def __call__(self, images: Tensor) -> Tensor:
        out = scores_of(self.model(images))
        index = torch.full((images.shape[0],), self.image, dtype=torch.long, device=images.device)
        return self.score(out, index)[:, None]


def _pointing(maps: Tensor, regions: Tensor | None, tolerance: float) -> Tensor:
    if regions is None:
        return torch.full((maps.shape[0],), math.nan)
    return mask_pointing_game(maps, regions, tolerance)


def _energy(maps: Tensor, regions: Tensor | None, _: float) -> Tensor:
    if regions is None:
        return torch.full((maps.shape[0],), math.nan)
    return mask_energy(maps, regions)


def _most_frequent(mask: Tensor, name: str) -> Tensor:
    """The most frequent class id other than 0 in a ground-truth mask."""
    counts = torch.bincount(mask.flatten().long())
    counts[0] = 0
    if int(counts.max()) == 0:
        raise TargetError(
            f"the mask of image {name} holds background (0) only: no class to explain "
            "(targets = 'label'); give a class index in targets"
        )
    return counts.argmax()


def reference_files(config: ExperimentConfig) -> list[Path]:
    """The image files of ``task.reference`` (``[]`` for ``"self"`` and other kinds),
    relative to the config's folder; listed before the model is built.

    Raises:
        ConfigError: a reference entry finds no image.
    """
    from camkit.experiment.data import _find_images

    reference = config.task.reference
    if config.task.kind != "embedding" or not isinstance(reference, list):
        return []
    try:
        return _find_images(list(reference), config.base_dir, None)[0]
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("data.source", "task.reference", 1)) from None


def concept(
    model: Callable[[Tensor], Any], paths: list[Path], config: ExperimentConfig, device: Any
) -> Tensor:
    """``(D,)`` mean embedding of the images ``paths``, read as the data's images are.

    Raises:
        DataError: a reference image cannot be decoded.
    """
    from camkit.experiment.data import read_image

    size = config.data.image_size
    assert size is not None and not isinstance(size, int)
    images = torch.from_numpy(np.stack([read_image(p, (size[0], size[1])) for p in paths]))
    with torch.no_grad():
        return scores_of(model(images.to(device))).flatten(1).mean(0).detach()


#: Outline colours: the ground truth (box or mask of the class) and the explained box.
TRUTH_COLOUR = (0, 255, 0)
EXPLAINED_COLOUR = (255, 0, 255)


def outline(
    picture: Image.Image,
    box: Sequence[float] | None = None,
    explained: Sequence[float] | None = None,
    region: np.ndarray | None = None,
) -> Image.Image:
    """``picture`` with the ground truth drawn on it: ``region``'s outline (the pixels of
    the ``(H, W)`` mask next to a pixel outside it) and ``box`` ``(x0, y0, x1, y1)``, half-open,
    in :data:`TRUTH_COLOUR`, and the ``explained`` box in :data:`EXPLAINED_COLOUR`. Boxes
    with negative coordinates (no ground truth) are not drawn.

    Example:
        >>> picture = outline(Image.new("RGB", (8, 8)), box=(2, 2, 6, 6))
        >>> picture.getpixel((2, 2)), picture.getpixel((4, 4))
        ((0, 255, 0), (0, 0, 0))
    """
    picture = picture.convert("RGB")
    if region is not None and region.any():
        inside = np.asarray(region, dtype=bool)
        padded = np.pad(inside, 1, constant_values=False)
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        edge = inside & ~interior
        pixels = np.array(picture)
        pixels[edge] = TRUTH_COLOUR
        picture = Image.fromarray(pixels)
    draw = ImageDraw.Draw(picture)
    for rect, colour in ((box, TRUTH_COLOUR), (explained, EXPLAINED_COLOUR)):
        if rect is not None and min(rect) >= 0:
            x0, y0, x1, y1 = (float(v) for v in rect)
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=colour)
    return picture


def ground_truth_of(
    kind: str, masks: Tensor | None, arrays: dict[str, np.ndarray], row: int
) -> dict[str, Any]:
    """``outline``'s keyword arguments for image ``row`` of a shard's ``arrays``: the
    ground-truth box, the explained box (detection) and the class's mask (segmentation;
    ``masks``: the images' ``(B, H, W)`` ground-truth class ids)."""
    box = arrays["box"][row].tolist() if "box" in arrays else None
    explained = arrays["explained_box"][row].tolist() if "explained_box" in arrays else None
    region = None
    if kind == "segmentation" and masks is not None:
        region = masks[row].cpu().numpy() == int(arrays["target"][row])
        box = None  # the mask says more
    return {"box": box, "explained": explained, "region": region}
