"""AblationCAM with AblationLayerFasterRCNN on torchvision's Faster R-CNN (MobileNetV3 FPN,
untrained): against a direct re-implementation and against pytorch-grad-cam 1.5.7.

The untrained detector scores every class about equally (~0.011), so its box score threshold
is 0: it returns its top boxes deterministically, and the targets are built from them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compat_helpers import images, needs_contrib, needs_grad_cam, small_cnn

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat.pytorch_grad_cam.ablation_fasterrcnn import detections_of
from camkit.compat.pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
from camkit.compat.pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform
from camkit.errors import ConfigError, LayerError, TargetError

pytestmark = needs_contrib  # camkit's ablationcam is in camkit-contrib


def detector(size: int = 128, **kw):
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    small = {"rpn_pre_nms_top_n_test": 30, "rpn_post_nms_top_n_test": 10}
    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None,
        weights_backbone=None,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        min_size=size,
        max_size=size,
        **{**small, **kw},
    ).eval()


def own_boxes(model, x, count=3):
    """Per image, (labels, boxes) of the detector's own top ``count`` detections."""
    with torch.no_grad():
        out = model(x)
    return [(d["labels"][:count].tolist(), d["boxes"][:count].numpy()) for d in out]


def shim_maps(model, x, boxes, batch_size=32, **call):
    targets = [FasterRCNNBoxScoreTarget(labels, b) for labels, b in boxes]
    cam = shim.AblationCAM(
        model,
        [model.backbone],
        reshape_transform=fasterrcnn_reshape_transform,
        ablation_layer=shim.AblationLayerFasterRCNN(),
        batch_size=batch_size,
    )
    with cam:
        return cam(x, targets=targets, **call)


def direct_maps(model, x, boxes, chunk=64):
    """Ablation-CAM over the pyramid written out: channel k of the concatenated levels set to
    -1000, the relative drop of the box score as its weight, |levels| resized to the pool
    level as the activations, ReLU and min-max scaling, resized to the input."""
    maps = []
    for image, (labels, b) in zip(x, boxes):
        target = FasterRCNNBoxScoreTarget(labels, b)
        with torch.no_grad():
            levels = model.backbone(model.transform([image])[0].tensors)
            clean = float(target(model(image[None])[0]))
            where = [(name, c) for name, v in levels.items() for c in range(v.shape[1])]
            scores = []
            for start in range(0, len(where), chunk):
                rows = where[start : start + chunk]

                def ablate(_m, _i, out, rows=rows):
                    out = {name: v.clone() for name, v in out.items()}
                    for j, (name, c) in enumerate(rows):
                        out[name][j, c] = -1000
                    return out

                handle = model.backbone.register_forward_hook(ablate)
                try:
                    outs = model(image[None].repeat(len(rows), 1, 1, 1))
                finally:
                    handle.remove()
                scores += [float(target(o)) for o in outs]
        weights = (clean - torch.tensor(scores)) / clean
        size = levels["pool"].shape[-2:]
        acts = torch.cat(
            [F.interpolate(v.abs(), size, mode="bilinear") for v in levels.values()], 1
        )
        cam = torch.relu((weights[:, None, None] * acts[0]).sum(0))
        cam = cam - cam.min()
        cam = cam / (cam.max() + 1e-7)
        up = F.interpolate(cam[None, None], x.shape[2:], mode="bilinear", align_corners=False)[0, 0]
        up = up - up.min()
        maps.append((up / (up.max() + 1e-7)).numpy())
    return np.stack(maps)


@pytest.fixture(scope="module")
def case():
    model = detector()
    x = images(1, size=96)
    boxes = own_boxes(model, x)
    assert len(boxes[0][0]) == 3  # the untrained detector does return boxes
    backbone = model.backbone
    model.train()  # the shim runs it in eval mode and restores the flags
    maps = shim_maps(model, x, boxes)
    assert model.backbone is backbone and model.training
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())  # its own forward is back
    return model.eval(), x, boxes, maps


def r(a, b):
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


def test_matches_a_direct_reimplementation(case):
    model, x, boxes, ours = case
    ref = direct_maps(model, x, boxes)
    assert ours.shape == (1, 96, 96) and ours.dtype == np.float32
    assert ours.max() == pytest.approx(1, abs=1e-6) and ours.min() == 0
    assert ref.std() > 0.05  # an informative map, not a constant
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def original_layer():
    """pytorch-grad-cam's AblationLayerFasterRCNN with its level lookup fixed.

    The original maps channel ``i`` to the level named ``{0: '0', 1: '1', 2: '2', 3: '3',
    4: 'pool'}[i // 256]``: right for a ResNet FPN ('0'..'3', 'pool') but a KeyError ('2')
    on MobileNetV3's pyramid ('0', '1', 'pool') once it reaches channel 512. The fix looks
    the level up in the pyramid's own order, as the shim does; the ablation is unchanged.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_grad_cam.ablation_layer import AblationLayerFasterRCNN

    class Fixed(AblationLayerFasterRCNN):
        def __call__(self, x):
            result = self.activations
            names = list(result)
            for i in range(result["pool"].size(0)):
                result[names[int(self.indices[i]) // 256]][i, int(self.indices[i]) % 256] = -1000
            return result

    return Fixed()


def grad_cam_maps(model, x, boxes, **call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pytorch_grad_cam import AblationCAM
        from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as Target
        from pytorch_grad_cam.utils.reshape_transforms import fasterrcnn_reshape_transform as rt

        cam = AblationCAM(
            model, [model.backbone], reshape_transform=rt, ablation_layer=original_layer()
        )
        return cam(x, targets=[Target(labels, b) for labels, b in boxes], **call)


@needs_grad_cam
def test_matches_grad_cam(case):
    model, x, boxes, ours = case
    theirs = grad_cam_maps(model, x, boxes)
    assert theirs.shape == ours.shape
    assert r(ours, theirs) >= 0.999
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@needs_grad_cam
@pytest.mark.slow
def test_matches_grad_cam_on_a_batch_with_the_models_proposals():
    # More proposals than the fast tests (60), two images, batches of 64.
    model = detector(96, rpn_pre_nms_top_n_test=60, rpn_post_nms_top_n_test=60)
    x = images(2, size=80)
    boxes = own_boxes(model, x)
    ours = shim_maps(model, x, boxes, batch_size=64)
    theirs = grad_cam_maps(model, x, boxes)
    for a, b in zip(ours, theirs):
        assert r(a, b) >= 0.999


@needs_grad_cam
@pytest.mark.slow
def test_eigen_smooth_matches_grad_cam(case):
    # Both project the weighted activations on their first principal component (NumPy's SVD).
    model, x, boxes, _ = case
    ours = shim_maps(model, x, boxes, eigen_smooth=True)
    theirs = grad_cam_maps(model, x, boxes, eigen_smooth=True)
    assert ours.std() > 0.05 and r(ours, theirs) >= 0.999


def test_detections_round_trip():
    rows = torch.tensor([[1.0, 2, 3, 4, 0.5, 7], [0, 0, 0, 0, 0, -1]])
    d = detections_of(rows)
    assert d["labels"].tolist() == [7] and d["scores"].tolist() == [0.5]
    assert d["boxes"].tolist() == [[1.0, 2, 3, 4]]


def test_bad_use_is_a_typed_error(case):
    model, x, boxes, _ = case
    layer = shim.AblationLayerFasterRCNN()
    with pytest.raises(TargetError, match="FasterRCNNBoxScoreTarget"):
        shim.AblationCAM(model, [model.backbone], ablation_layer=layer)(x)
    with pytest.raises(ConfigError, match="one pyramid module"):
        shim.AblationCAM(model, [model.backbone, model.backbone], ablation_layer=layer)(
            x, [FasterRCNNBoxScoreTarget(*boxes[0])]
        )
    cnn = small_cnn()
    with pytest.raises(LayerError, match="dict"):
        shim.AblationCAM(cnn, [cnn[0][3]], ablation_layer=layer)(images(1), [lambda o: o[0]])
    assert all(len(m._forward_hooks) == 0 for m in cnn.modules())
    assert all("forward" not in vars(m) for m in cnn.modules())


def test_the_pyramid_is_computed_once_per_call(case):
    # As the original, the ablated forwards reuse the clean pyramid: the backbone's body runs
    # for the clean forward only, and a target that fails mid-call leaves the model as it was.
    model, x, boxes, ours = case
    calls = []
    handle = model.backbone.body.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        again = shim_maps(model, x, boxes, batch_size=128)
        assert len(calls) == 1
        np.testing.assert_allclose(again, ours, atol=1e-5)

        def failing(found):
            if failing.seen:  # the first ablated chunk (the clean score came first)
                raise TargetError("boom")
            failing.seen = True
            return FasterRCNNBoxScoreTarget(*boxes[0])(found)

        failing.seen = False
        with pytest.raises(TargetError, match="boom"):
            shim.AblationCAM(
                model, [model.backbone], ablation_layer=shim.AblationLayerFasterRCNN()
            )(x, [failing])
    finally:
        handle.remove()
    assert all("forward" not in vars(m) for m in model.modules())
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_another_input_runs_the_pyramid_module():
    # The stand-in forward answers only inputs equal to the clean forward's, in its thread.
    from camkit.compat.pytorch_grad_cam.ablation_fasterrcnn import PyramidAblation, _Gate

    class Pyramid(torch.nn.Module):
        def forward(self, x):
            return {"0": x * 2, "pool": x[:, :, ::2, ::2]}

    module, ablation = Pyramid(), PyramidAblation(_Gate(), -1000.0)
    undo = ablation.attach(module)
    try:
        x = torch.rand(2, 3, 4, 4)
        first = module(x)
        assert ablation.reused == 0 and torch.equal(first["0"], x * 2)
        again = module(x[[1, 1, 0]])  # the same images, in another order: reused
        assert ablation.reused == 1 and torch.equal(again["0"], x[[1, 1, 0]] * 2)
        same = module(x[[0, 0]])  # one image's rows: the levels in memory of their own
        assert ablation.reused == 2 and torch.equal(same["0"], x[[0, 0]] * 2)
        assert same["0"].is_contiguous()
        assert same["0"].untyped_storage().data_ptr() != ablation.clean["0"].data_ptr()
        other = x.clone()
        other[0, 0, 0, 0] += 1
        assert torch.equal(module(other)["0"], other * 2) and ablation.reused == 2
        import threading

        out = []
        worker = threading.Thread(target=lambda: out.append(module(x)))
        worker.start()
        worker.join()
        assert torch.equal(out[0]["0"], x * 2) and ablation.reused == 2
    finally:
        undo()
    assert "forward" not in vars(module)


def test_a_transform_that_does_not_fit_fails_before_the_ablations(case):
    # Checked on the clean pyramid, as the backbone returns it: the heads never run.
    model, x, boxes, _ = case
    target = [FasterRCNNBoxScoreTarget(*boxes[0])]
    layer = shim.AblationLayerFasterRCNN()
    calls = []
    handle = model.roi_heads.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="channels concatenated"):
            shim.AblationCAM(model, [model.backbone], lambda levels: levels["0"], layer)(x, target)
        assert calls == []

        def missing(levels):
            return levels["p6"]  # RetinaNet's level name, absent from this pyramid

        with pytest.raises(ConfigError, match=r"levels \['0', '1', 'pool'\].*KeyError"):
            shim.AblationCAM(model, [model.backbone], missing, layer)(x, target)
    finally:
        handle.remove()
    assert all("forward" not in vars(m) for m in model.modules())
    with pytest.raises(ConfigError, match="this pyramid has none"):
        fasterrcnn_reshape_transform({"0": torch.ones(1, 2, 4, 4), "p6": torch.ones(1, 2, 1, 1)})
