"""Ready-made targets beyond "the logit of one class": class, segmentation mask, similarity.

Each target is checked as a function against values computed by hand, then end to end with
Grad-CAM (gradients through the target, our own hook as reference) and with a perturbation
method, where the scoring service hands the target rows that are masked copies of different
images and only the ``index`` argument says which image a row belongs to.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.errors import LayerError, TargetError
from camkit.targets import ClassTarget, SegmentationTarget, SimilarityTarget

from .models import TinyCNN, TinyEmbedder, TinySegmenter
from .reference import MaskedScores, masked_scores_reference, reference_capture


def test_targets_are_exported() -> None:
    assert camkit.targets.SegmentationTarget is SegmentationTarget


# -- the functions ---------------------------------------------------------------------------


def test_class_target_picks_each_rows_class() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    index = torch.tensor([1, 0, 1])  # rows 0 and 2 are copies of image 1
    assert torch.equal(ClassTarget(2)(scores, index), torch.tensor([3.0, 6.0, 9.0]))
    assert torch.equal(ClassTarget([0, 1])(scores, index), torch.tensor([2.0, 4.0, 8.0]))


def test_segmentation_target_sums_class_logits_in_mask() -> None:
    scores = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mask = torch.tensor([[True, False], [False, True]])
    index = torch.tensor([0, 1])
    # class 1 of image 0 is [[4, 5], [6, 7]], of image 1 [[16, 17], [18, 19]]
    assert torch.equal(SegmentationTarget(1, mask)(scores, index), torch.tensor([11.0, 35.0]))
    per_image = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.5], [0.5, 0.0]]])
    rows = torch.tensor([1, 0])
    assert torch.equal(
        SegmentationTarget(1, per_image)(scores[[1, 0]], rows), torch.tensor([17.5, 4.0])
    )


def test_similarity_target_is_cosine_similarity() -> None:
    emb = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    index = torch.tensor([0, 1])
    assert torch.allclose(
        SimilarityTarget(torch.tensor([1.0, 0.0]))(emb, index), torch.tensor([0.6, 1.0])
    )
    per_image = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    assert torch.allclose(SimilarityTarget(per_image)(emb, index), torch.tensor([0.8, 0.0]))


@pytest.mark.parametrize(
    ("target", "scores", "match"),
    [
        (ClassTarget(7), torch.zeros(2, 5), r"class 7 is out of range.*\[0, 4\]"),
        (ClassTarget(1), torch.zeros(2, 5, 4, 4), r"needs \(N, num_classes\) scores"),
        (ClassTarget([0]), torch.zeros(2, 5), "1 entries"),
        (SegmentationTarget(0, torch.ones(3, 3)), torch.zeros(2, 2, 4, 4), "mask has shape"),
        (SegmentationTarget(5, torch.ones(4, 4)), torch.zeros(2, 2, 4, 4), "out of range"),
        (SegmentationTarget(0, torch.ones(4, 4)), torch.zeros(2, 2), "needs dense"),
        (SimilarityTarget(torch.ones(3)), torch.zeros(2, 4), "3 dimensions .* outputs 4"),
    ],
)
def test_mismatched_targets_raise(
    target: Callable[[Tensor, Tensor], Tensor], scores: Tensor, match: str
) -> None:
    with pytest.raises(TargetError, match=match):
        target(scores, torch.arange(2))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ClassTarget(1.5), "an int or a 1-D sequence"),
        (lambda: SegmentationTarget(0, [[1, 0]]), r"mask must be an \(H, W\)"),
        (lambda: SegmentationTarget("person", torch.ones(2, 2)), "class_index must be an int"),
        (lambda: SimilarityTarget(torch.ones(1, 2, 3)), r"reference must be \(D,\) or \(B, D\)"),
    ],
)
def test_bad_target_arguments_raise(make: Callable[[], object], match: str) -> None:
    with pytest.raises(TargetError, match=match):
        make()


# -- end to end ------------------------------------------------------------------------------


def _segmentation_case() -> tuple[nn.Module, Tensor, SegmentationTarget]:
    torch.manual_seed(0)
    model = TinySegmenter().eval()
    x = torch.randn(2, 3, 12, 12)
    masks = torch.zeros(2, 12, 12)
    masks[0, 2:6, 3:9] = 1
    masks[1, 7:11, 1:5] = 1
    return model, x, SegmentationTarget(2, masks)


def _similarity_case() -> tuple[nn.Module, Tensor, SimilarityTarget]:
    torch.manual_seed(0)
    model = TinyEmbedder().eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        reference = model(torch.randn(2, 3, 12, 12))
    return model, x, SimilarityTarget(reference)


def _class_case() -> tuple[nn.Module, Tensor, ClassTarget]:
    torch.manual_seed(0)
    return TinyCNN().eval(), torch.randn(2, 3, 12, 12), ClassTarget([3, 1])


CASES = {
    "segmentation": (_segmentation_case, "backbone"),
    "similarity": (_similarity_case, "features"),
    "class": (_class_case, "features"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gradcam_explains_the_target(case: str) -> None:
    make, layer = CASES[case]
    model, x, target = make()
    acts, grads, _ = reference_capture(
        model, model.get_submodule(layer), x, lambda s: target(s, torch.arange(2)), lambda t: t
    )
    expected = torch.relu(torch.einsum("bc,bchw->bhw", grads.mean((2, 3)), acts))
    res = camkit.create("gradcam", model, layer)(x, targets=target)
    torch.testing.assert_close(res.layer_maps[layer], expected, rtol=1e-4, atol=1e-7)
    assert float(expected.amax()) > 0
    assert torch.equal(res.targets, torch.tensor([-1, -1]))


@pytest.mark.parametrize("case", list(CASES))
def test_scoring_service_passes_each_rows_image(case: str) -> None:
    make, layer = CASES[case]
    model, x, target = make()
    acts, _, _ = reference_capture(
        model, model.get_submodule(layer), x, lambda s: target(s, torch.arange(2)), lambda t: t
    )
    expected = masked_scores_reference(model, x, acts, target)
    # batch_size 5 mixes both images' masked copies in one forward pass.
    method = MaskedScores(MaskedScores.Config(batch_size=5))
    res = camkit.Extractor(method, model, layer)(x, targets=target)
    torch.testing.assert_close(res.layer_maps[layer], expected, rtol=1e-4, atol=1e-6)


def test_class_target_equals_class_indices() -> None:
    model, x, target = _class_case()
    cam = camkit.create("gradcam", model, "features")
    by_index = cam(x, targets=[3, 1])
    by_callable = cam(x, targets=target)
    torch.testing.assert_close(by_callable.maps, by_index.maps)


@pytest.mark.parametrize("method", camkit.list_methods())
def test_every_method_takes_a_segmentation_target(method: str) -> None:
    model, x, target = _segmentation_case()
    fields = camkit.method_info(method).config.model_fields
    config = {k: v for k, v in {"num_samples": 2, "seed": 0}.items() if k in fields}
    cam = camkit.create(method, model, "backbone", **config)
    if camkit.method_info(method).cls.needs_attention:  # a ViT-only method refuses a CNN
        with pytest.raises(LayerError, match="attention"):
            cam(x, targets=target)
        return
    try:
        res = cam(x, targets=target)
    except TargetError as exc:
        # A method bound to class indices (CAM reads classifier rows) must say so.
        assert "class-index" in str(exc) or "class index" in str(exc)
        return
    assert res.maps.shape == (2, 12, 12)
    assert bool(torch.isfinite(res.maps).all()) and res.maps.min() >= 0 and res.maps.max() <= 1


def test_segmentation_mask_weights_pixels() -> None:
    # Doubling the mask doubles every gradient, leaving Grad-CAM's map unchanged after
    # normalization.
    model, x, target = _segmentation_case()
    cam = camkit.create("gradcam", model, "backbone")
    base = cam(x, targets=target)
    doubled = cam(x, targets=SegmentationTarget(2, target.mask * 2))
    torch.testing.assert_close(doubled.maps, base.maps)
    torch.testing.assert_close(
        doubled.weights["backbone"], 2 * base.weights["backbone"], rtol=1e-5, atol=1e-9
    )
