"""The ShapleyCAM (pytorch-grad-cam 1.5.7) and LeGrad (torchcam 0.5.0) shims, computed by
camkit-contrib, against the originals with the same call protocol."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from compat_helpers import images, needs_contrib, needs_grad_cam, needs_torchcam
from torch import nn

import camkit.compat.pytorch_grad_cam as shim
from camkit.compat.pytorch_grad_cam.utils import model_targets as shim_targets
from camkit.compat.torchcam import methods as tc_shim
from camkit.errors import ConfigError, LayerError, TargetError
from camkit.testing import no_hooks_left

pytestmark = needs_contrib


def smooth_cnn() -> nn.Module:
    """A curved tail after the target layer (tanh), so ShapleyCAM's Hessian term is not 0."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Softplus()),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


def tiny_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=3,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initializes the head
    return model.eval()


@needs_grad_cam
@pytest.mark.parametrize("classes", [None, [1, 3]])
def test_shapleycam_matches_grad_cam(classes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pytorch_grad_cam as peer
    model, x = smooth_cnn(), images(2)
    maps = []
    for lib, targets_mod in ((peer, peer.utils.model_targets), (shim, shim_targets)):
        make = targets_mod.ClassifierOutputTarget
        targets = None if classes is None else [make(c) for c in classes]
        with lib.ShapleyCAM(model=model, target_layers=[model[0]]) as cam:
            maps.append(cam(input_tensor=x, targets=targets))
    ours, theirs = maps
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    no_hooks_left(model)
    gradcam = shim.GradCAM(model, [model[0]])(x, targets)
    assert np.abs(gradcam - ours).max() > 1e-3  # the Hessian term shows


@needs_torchcam
@pytest.mark.parametrize("blocks", [[2], [1, 2], [0, 1, 2]])
@pytest.mark.parametrize("normalized", [True, False])
def test_legrad_matches_torchcam(blocks, normalized):
    from torchcam.methods import LeGrad

    model, x = tiny_vit(), images(2, size=32)
    outs = []
    for cls in (LeGrad, tc_shim.LeGrad):
        layers = [model.encoder.layers[i] for i in blocks]
        with cls(model, layers) as extractor:
            scores = model(x)
            outs.append(extractor([3, 7], scores, normalized=normalized)[0].detach())
        no_hooks_left(model)
    theirs, ours = outs
    assert len(outs) == 2 and ours.shape == theirs.shape == (2, 4, 4)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_legrad_shim_errors():
    model = tiny_vit()
    with pytest.raises(LayerError):
        tc_shim.LeGrad(model, [])
    layer = "encoder.layers.encoder_layer_2"
    with pytest.raises(TypeError, match="prefix_tokens"):
        tc_shim.LeGrad(model, layer, prefix_tokens=1.0)
    with pytest.raises(ConfigError, match="non-negative"):
        tc_shim.LeGrad(model, layer, prefix_tokens=-1)
    with pytest.raises(TypeError, match="grid_shape"):
        tc_shim.LeGrad(model, layer, grid_shape=[4, 4])
    with pytest.raises(ConfigError, match="positive"):
        tc_shim.LeGrad(model, layer, grid_shape=(0, 4))
    with pytest.raises(TypeError, match="callable"):
        tc_shim.LeGrad(model, layer, score_projection=3)
    with tc_shim.LeGrad(model, layer, grid_shape=(2, 8)) as extractor:  # 16 patches on 2x8
        assert extractor(0, model(images(1, size=32)))[0].shape == (1, 2, 8)
    for kwargs, match in [
        ({"grid_shape": (3, 5)}, "does not match"),
        ({"prefix_tokens": 0}, "square"),  # 17 tokens
        ({"prefix_tokens": 17}, "at least one"),
    ]:
        with (
            tc_shim.LeGrad(model, layer, **kwargs) as extractor,
            pytest.raises(ConfigError, match=match),
        ):
            extractor(0, model(images(1, size=32)))
    with tc_shim.LeGrad(model, layer) as extractor:
        scores = model(images(1, size=32))
        with pytest.raises(TargetError):
            extractor(targets=lambda out: out[0], scores=scores)
    no_hooks_left(model)


@needs_torchcam
@pytest.mark.parametrize(("prefix", "grid", "given"), [(1, (2, 2), False), (2, (2, 3), True)])
def test_legrad_score_projection_prefix_and_grid_match_torchcam(prefix, grid, given):
    """A model that is no torchvision ViT, with torchcam's ``score_projection``,
    ``prefix_tokens`` and ``grid_shape`` (given, or inferred as a square)."""
    import copy

    from test_torchcam_ported import _TinyViT
    from torchcam.methods import LeGrad

    torch.manual_seed(0)
    model = _TinyViT(grid, prefix)
    x = torch.randn(2, 3, *grid)
    outs = []
    for lib, m in ((LeGrad, copy.deepcopy(model)), (tc_shim.LeGrad, model)):
        kwargs = {"prefix_tokens": prefix, "grid_shape": grid if given else None}
        with lib(m, list(m.blocks), score_projection=m.project, **kwargs) as extractor:
            outs.append(extractor([0, 2], m(x), normalized=False)[0].detach())
        no_hooks_left(m)
    theirs, ours = outs
    assert ours.shape == theirs.shape == (2, *grid) and theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
