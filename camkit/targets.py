"""Ready-made targets: what score a CAM explains, beyond "the logit of one class".

A target is any callable ``fn(scores) -> (N,)`` or ``fn(scores, index) -> (N,)`` passed as
``targets=`` to an extractor. ``scores`` is the model's output for ``N`` rows; ``index[i]``
is the batch image row ``i`` belongs to. Rows are not always the batch itself: perturbation
methods score masked or noisy copies of the images, so a target that holds per-image data
(a mask per image, a reference vector per image) must look it up through ``index``. The
targets here do, and are differentiable, so every method can use them.

>>> cam = camkit.create("gradcam", segmenter, "backbone.layer4")
>>> res = cam(images, targets=camkit.targets.SegmentationTarget(class_index=15, mask=person))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from camkit.errors import TargetError

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = [
    "ALL_POSITIVE",
    "AllPositive",
    "ClassTarget",
    "DetectionTarget",
    "OutputTarget",
    "SegmentationTarget",
    "SimilarityTarget",
    "TargetFn",
    "Targets",
    "box_iou",
]

#: The string form of :class:`AllPositive`: ``targets="all-positive"``.
ALL_POSITIVE = "all-positive"


class AllPositive:
    r"""One map per positive label of a multi-label (sigmoid) classifier.

    ``targets=AllPositive()`` (or the string ``"all-positive"``) makes an extractor explain
    every ``(image, label)`` pair whose logit is above ``threshold`` on the clean image:
    :math:`y_k > t`, by default :math:`t = 0`, i.e. :math:`\sigma(y_k) > 0.5`. The batch is
    expanded to one row per pair, ordered by image then label; the result's ``images`` and
    ``targets`` (or ``pairs``) say which image and label each map belongs to. An image with
    no positive label gets no row (``result.images`` does not list it); a batch without any
    gives an empty result (``maps`` of shape ``(0, H, W)``). Finding the pairs costs one
    forward pass of the batch under inference mode, before the usual call on the pairs.

    Args:
        threshold: the logit a label must exceed (``> threshold``, strictly). For a threshold
            on the probability use :meth:`at_probability`.

    Example:
        >>> res = camkit.create("gradcam", tagger, "layer4")(images, targets="all-positive")
        >>> res.pairs[:2]              # [(image, label), ...], one per row of res.maps
        [(0, ...), (0, ...)]
    """

    def __init__(self, threshold: float = 0.0) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
        ):
            raise TargetError(f"AllPositive's threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)

    @classmethod
    def at_probability(cls, probability: float) -> AllPositive:
        r"""Positive where the sigmoid is above ``probability`` (in ``(0, 1)``): the logit
        threshold :math:`\lograc{p}{1 - p}`.

        Example:
            >>> AllPositive.at_probability(0.5).threshold
            0.0
        """
        if (
            isinstance(probability, bool)
            or not isinstance(probability, (int, float))
            or not 0 < probability < 1
        ):
            raise TargetError(
                f"AllPositive.at_probability needs a probability in (0, 1), got {probability!r}"
            )
        return cls(math.log(probability / (1 - probability)))

    def pairs(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """``(images, labels)``: two ``(R,)`` long tensors on the CPU, the positive pairs of
        the clean ``(B, K)`` logits, ordered by image then label.

        Example:
            >>> AllPositive().pairs(torch.tensor([[2.0, -1.0, 0.5], [-3.0, -1.0, -1.0]]))
            (tensor([0, 0]), tensor([0, 2]))
        """
        if scores.dim() != 2:
            raise TargetError(
                f"targets='all-positive' needs (B, num_labels) logits (a multi-label "
                f"classifier's output); the model's scores have shape {tuple(scores.shape)}"
            )
        images, labels = (scores.detach() > self.threshold).nonzero(as_tuple=True)
        return images.cpu(), labels.cpu()

    def __repr__(self) -> str:
        return f"AllPositive(threshold={self.threshold})"


if TYPE_CHECKING:
    #: ``fn(scores) -> (N,)`` or ``fn(scores, index) -> (N,)``, where ``index[i]`` is the
    #: batch image that row ``i`` of ``scores`` comes from (rows may be perturbed copies).
    TargetFn = Callable[..., Tensor]
    #: What an extractor's ``targets=`` accepts: ``None`` (each image's predicted class), a
    #: class index, one per image (a list or a 1-D tensor), or a :data:`TargetFn` (and, as
    #: it expands the batch, ``"all-positive"`` / :class:`AllPositive`).
    Targets = int | Sequence[int] | Tensor | TargetFn | None
else:

    def __getattr__(name: str) -> Any:
        # The aliases name torch's Tensor: built on first use, so that importing this module
        # (which method plugins may do) imports no torch.
        if name not in ("TargetFn", "Targets"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from torch import Tensor

        fn = Callable[..., Tensor]
        globals().update(TargetFn=fn, Targets=int | Sequence[int] | Tensor | fn | None)
        return globals()[name]


def _per_image(value: Tensor, index: Tensor, what: str) -> Tensor:
    """Pick ``value``'s entry for each row's image; ``value`` holds one entry per image."""
    if int(index.max()) >= value.shape[0]:
        raise TargetError(
            f"{what} has {value.shape[0]} entries (one per image) but the batch has "
            f"{int(index.max()) + 1} or more images"
        )
    return value[index.to(value.device)]


class ClassTarget:
    """The logit of class ``class_index``: ``scores[:, c]`` for ``(N, K)`` scores.

    Args:
        class_index: one class for every image, or one per image (a sequence or 1-D tensor
            of ``B`` ints).
    """

    def __init__(self, class_index: int | Sequence[int] | Tensor) -> None:
        import torch

        classes = torch.as_tensor(class_index)
        if classes.dim() > 1 or classes.is_floating_point() or classes.dtype == torch.bool:
            raise TargetError(
                f"ClassTarget needs an int or a 1-D sequence of ints, got {class_index!r}"
            )
        self.classes = classes.long()

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.dim() != 2:
            raise TargetError(
                f"ClassTarget needs (N, num_classes) scores, got shape {tuple(scores.shape)}"
            )
        classes = self.classes.to(scores.device)
        if classes.dim() == 1:
            classes = _per_image(classes, index, "ClassTarget's class_index")
        else:
            classes = classes.expand(scores.shape[0])
        num_classes = scores.shape[1]
        if bool(((classes < 0) | (classes >= num_classes)).any()):
            raise TargetError(
                f"ClassTarget class {self.classes.tolist()} is out of range: the model has "
                f"{num_classes} classes, so targets must be in [0, {num_classes - 1}]"
            )
        return scores.gather(1, classes.unsqueeze(1)).squeeze(1)

    def __repr__(self) -> str:
        return f"ClassTarget({self.classes.tolist()})"


class OutputTarget:
    r"""One output value, as it is or negated: for binary classifiers and regression models.

    - A binary classifier with one logit ``(N, 1)``: ``OutputTarget()`` explains the positive
      class (the logit, what ``targets=None`` also picks), ``OutputTarget(negate=True)`` the
      negative class (:math:`-y`, the logit of the complement: :math:`\log\frac{1-p}{p}`).
    - A regression model, ``(N,)`` or ``(N, D)`` outputs: output ``index``, or with
      ``negate=True`` what lowers it.

    Args:
        index: the output column for ``(N, D)`` outputs (ignored for ``(N,)``).
        negate: explain :math:`-y` instead of :math:`y`.

    Example:
        >>> OutputTarget(negate=True)(torch.tensor([[2.0], [-1.0]]), torch.arange(2))
        tensor([-2.,  1.])
    """

    def __init__(self, index: int = 0, *, negate: bool = False) -> None:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise TargetError(f"OutputTarget's index must be an int >= 0, got {index!r}")
        self.index = index
        self.sign = -1.0 if negate else 1.0

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        if scores.dim() == 1:
            return self.sign * scores
        if scores.dim() != 2 or self.index >= scores.shape[1]:
            raise TargetError(
                f"OutputTarget({self.index}) needs (N,) or (N, D) outputs with D > {self.index}, "
                f"got shape {tuple(scores.shape)}"
            )
        return self.sign * scores[:, self.index]

    def __repr__(self) -> str:
        return f"OutputTarget({self.index}, negate={self.sign < 0})"


class SegmentationTarget:
    r"""The summed logit of one class inside a mask, for dense outputs ``(N, K, H, W)``.

    .. math:: s = \sum_{i,j} M(i, j)\, Y^{(c)}(i, j)

    Three ways to say where, one per question:

    - ``mask``: a region you give ("why is this object class ``c``?");
    - ``pixel=(row, col)``: one clicked pixel, :math:`s = Y^{(c)}(row, col)` ("why is this
      pixel class ``c``?");
    - :meth:`predicted`: the whole region the model labels ``c`` on the clean image ("why
      does it see ``c`` here?"). The mask is fixed from the clean output, so perturbed
      forwards are scored on the same pixels.

    Segmentation models that return a dict (torchvision's ``{"out", "aux"}``) are explained
    through ``out``.

    Args:
        class_index: the class ``c`` whose logits are summed.
        mask: ``(H, W)`` for every image, or ``(B, H, W)`` one per image, at the output's
            resolution; bool or float (a float mask weights the pixels).
        pixel: ``(row, col)`` of one output pixel, instead of ``mask``.

    Example:
        >>> out = segmenter(images)["out"]                         # (B, K, H, W)
        >>> whole = SegmentationTarget.predicted(out, class_index=15)
        >>> click = SegmentationTarget(15, pixel=(40, 20))
        >>> res = camkit.create("gradcam", segmenter, "backbone.layer4")(images, targets=whole)
    """

    def __init__(
        self,
        class_index: int,
        mask: Tensor | None = None,
        *,
        pixel: tuple[int, int] | None = None,
    ) -> None:
        import torch

        if not isinstance(class_index, int) or isinstance(class_index, bool):
            raise TargetError(
                f"SegmentationTarget's class_index must be an int, got {class_index!r}"
            )
        if (mask is None) == (pixel is None):
            raise TargetError("SegmentationTarget needs a mask or a pixel=(row, col), not both")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dim() < 2):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TargetError(
                f"SegmentationTarget's mask must be an (H, W) or (B, H, W) tensor, got {got}"
            )
        if pixel is not None and not (
            isinstance(pixel, (tuple, list))
            and len(pixel) == 2
            and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in pixel)
        ):
            raise TargetError(
                f"SegmentationTarget's pixel must be (row, col), two ints >= 0, got {pixel!r}"
            )
        self.class_index = class_index
        self.mask = None if mask is None else mask.detach()
        self.pixel = None if pixel is None else (int(pixel[0]), int(pixel[1]))

    @classmethod
    def predicted(cls, scores: Tensor, class_index: int) -> SegmentationTarget:
        """The target over every pixel whose predicted class (argmax of ``scores``
        ``(B, K, H, W)``, the clean output) is ``class_index``: one mask per image.

        Example:
            >>> scores = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]])   # (1, 2, 1, 2)
            >>> SegmentationTarget.predicted(scores, 1).mask
            tensor([[[False,  True]]])
        """
        import torch

        if not isinstance(scores, torch.Tensor) or scores.dim() < 3:
            got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise TargetError(
                f"SegmentationTarget.predicted needs the clean (B, K, H, W) scores, got {got}"
            )
        return cls(class_index, scores.detach().argmax(1) == class_index)

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        spatial = scores.shape[2:]
        if scores.dim() < 3:
            raise TargetError(
                "SegmentationTarget needs dense (N, num_classes, H, W) scores, got shape "
                f"{tuple(scores.shape)}"
            )
        if not 0 <= self.class_index < scores.shape[1]:
            raise TargetError(
                f"SegmentationTarget class {self.class_index} is out of range: the model has "
                f"{scores.shape[1]} classes, so targets must be in [0, {scores.shape[1] - 1}]"
            )
        logits = scores[:, self.class_index]
        if self.pixel is not None:
            row, col = self.pixel
            if len(spatial) != 2 or row >= spatial[0] or col >= spatial[1]:
                raise TargetError(
                    f"SegmentationTarget's pixel {self.pixel} is outside the model's "
                    f"{tuple(spatial)} output"
                )
            return logits[:, row, col]
        assert self.mask is not None
        mask = self.mask.to(scores.device, scores.dtype)
        if mask.shape[-len(spatial) :] != spatial or mask.dim() not in (
            len(spatial),
            len(spatial) + 1,
        ):
            raise TargetError(
                f"SegmentationTarget's mask has shape {tuple(self.mask.shape)}; the model's "
                f"output is {tuple(spatial)} per class, so the mask must be {tuple(spatial)} or "
                f"(B, {', '.join(map(str, spatial))})"
            )
        if mask.dim() > len(spatial):
            mask = _per_image(mask, index, "SegmentationTarget's mask")
        return (logits * mask).flatten(1).sum(1)

    def __repr__(self) -> str:
        where = f"pixel={self.pixel}" if self.mask is None else f"mask={tuple(self.mask.shape)}"
        return f"SegmentationTarget(class_index={self.class_index}, {where})"


class SimilarityTarget:
    r"""Cosine similarity of an embedding output ``(N, D)`` to a reference vector.

    .. math:: s = \frac{e \cdot r}{\lVert e \rVert \lVert r \rVert}

    Use it to explain what makes an image's embedding close to a reference (another image's
    embedding, a text embedding, a class prototype). The embedding is the model's output
    read as camkit reads scores: a tensor, the first tensor of a tuple, the ``logits`` /
    ``out`` entry or only tensor of a dict; it is flattened per image. For a concept (the
    mean embedding of several images) use :meth:`concept`; for both maps of a pair of
    images, :func:`camkit.tasks.similarity_maps`.

    Args:
        reference: ``(D,)`` for every image, or ``(B, D)`` one per image.

    Example:
        >>> reference = camkit.tasks.embed(model, other_image)          # (1, D)
        >>> res = camkit.create("gradcam", model, "layer4")(x, SimilarityTarget(reference[0]))
    """

    def __init__(self, reference: Tensor) -> None:
        import torch

        if not isinstance(reference, torch.Tensor) or reference.dim() not in (1, 2):
            got = (
                tuple(reference.shape)
                if isinstance(reference, torch.Tensor)
                else type(reference).__name__
            )
            raise TargetError(f"SimilarityTarget's reference must be (D,) or (B, D), got {got}")
        self.reference = reference.detach()

    @classmethod
    def concept(cls, model: nn.Module, images: Tensor) -> SimilarityTarget:
        """Similarity to a concept: the mean embedding of ``images`` ``(n, C, H, W)``,
        examples of it (computed without gradients).

        Example:
            >>> dogs = SimilarityTarget.concept(model, dog_images)
            >>> res = camkit.create("gradcampp", model, "layer4")(x, targets=dogs)
        """
        from camkit.tasks import embed  # camkit.tasks builds on these targets

        return cls(embed(model, images).mean(0))

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        import torch.nn.functional as F

        embedding = scores.flatten(1)
        reference = self.reference.to(scores.device, scores.dtype)
        if reference.shape[-1] != embedding.shape[1]:
            raise TargetError(
                f"SimilarityTarget's reference has {reference.shape[-1]} dimensions but the "
                f"model outputs {embedding.shape[1]} per image"
            )
        if reference.dim() == 2:
            reference = _per_image(reference, index, "SimilarityTarget's reference")
        else:
            reference = reference.expand_as(embedding)
        return F.cosine_similarity(embedding, reference, dim=1)

    def __repr__(self) -> str:
        return f"SimilarityTarget(reference={tuple(self.reference.shape)})"


def box_iou(boxes: Tensor, reference: Tensor) -> Tensor:
    """Intersection over union of boxes ``(..., N, 4)`` with one box each ``(..., 4)``.

    Boxes are ``(x1, y1, x2, y2)`` in pixels; the result ``(..., N)`` is differentiable in both.

    Example:
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2]]), torch.tensor([0.0, 0, 2, 2]))
        tensor([1.0000, 0.3333])
    """
    import torch

    reference = reference.unsqueeze(-2)
    low = torch.maximum(boxes[..., :2], reference[..., :2])
    high = torch.minimum(boxes[..., 2:], reference[..., 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    area = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)
    ref_area = (reference[..., 2:] - reference[..., :2]).clamp(min=0).prod(-1)
    union = area + ref_area - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


class DetectionTarget:
    r"""How strongly a detector still finds one box: class score times overlap, best match.

    For detectors that return one dict of ``boxes``, ``scores`` and ``labels`` per image
    (torchvision's Faster R-CNN, Mask R-CNN, RetinaNet, FCOS, SSD), which camkit packs into
    ``(N, M, 6)`` rows ``[x1, y1, x2, y2, score, label]`` (label ``-1`` pads). The target
    score of a row is its best match to the reference box ``r`` among the boxes of class
    ``c``:

    .. math:: s = \max_{j \,:\, \ell_j = c} p_j \cdot \mathrm{IoU}(b_j, r)

    and 0 when the detector returns no box of class ``c``. A perturbed forward (Score-CAM,
    Ablation-CAM) returns different boxes, possibly none, in a different order: the maximum
    matches them to the reference by overlap, never by position. Differentiable in the
    scores and the box coordinates, so gradient methods explain it too.

    Args:
        box: the reference box ``(x1, y1, x2, y2)`` in input pixels, ``(4,)`` for every image
            or ``(B, 4)`` one per image (usually a box the detector found on the clean image).
        class_index: the class ``c``, one int or one per image.

    Example:
        >>> det = detector(images)[0]                      # the clean detections of image 0
        >>> target = DetectionTarget(det["boxes"][0], int(det["labels"][0]))
        >>> res = camkit.create("gradcam", detector, "backbone.body.layer4")(images[:1], target)
    """

    def __init__(self, box: Tensor | Sequence[float], class_index: int | Sequence[int] | Tensor):
        import torch

        box = torch.as_tensor(box).detach()
        if box.dim() not in (1, 2) or box.shape[-1] != 4 or not box.is_floating_point():
            raise TargetError(
                "DetectionTarget's box must be (x1, y1, x2, y2) floats, (4,) or (B, 4), got "
                f"{tuple(box.shape)} {box.dtype}"
            )
        self.box = box
        self.classes = ClassTarget(class_index).classes

    def __call__(self, scores: Tensor, index: Tensor) -> Tensor:
        import torch

        if scores.dim() != 3 or scores.shape[2] != 6:
            raise TargetError(
                "DetectionTarget needs a detector's output (a list of dicts with boxes, scores "
                f"and labels per image); the model's scores have shape {tuple(scores.shape)}"
            )
        box = self.box.to(scores.device, scores.dtype)
        box = _per_image(box, index, "DetectionTarget's box") if box.dim() == 2 else box
        classes = self.classes.to(scores.device)
        if classes.dim() == 1:
            classes = _per_image(classes, index, "DetectionTarget's class_index")
        match = scores[..., 4] * box_iou(scores[..., :4], box)
        # Labels travel as floats beside the boxes (exact up to 2**24, 256 in bfloat16).
        labels = scores[..., 5].round().long()
        match = match * (labels == classes.unsqueeze(-1))
        # One zero column: the score of a row without any box of the class.
        return torch.cat([match, match.new_zeros(match.shape[0], 1)], 1).amax(1)

    def __repr__(self) -> str:
        return f"DetectionTarget(box={self.box.tolist()}, class_index={self.classes.tolist()})"
