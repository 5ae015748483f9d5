"""Every registered method on the torchvision models people use (random weights, small inputs).

For each (architecture, method) pair the extractor must return maps that are finite, in
[0, 1], of the input's size and not constant, and the engine's steps must agree with an
independent reference: the scores are the plain model's, the layer map is ReLU(sum_k w_k A_k)
over activations captured by our own hook (before in-place ops) and read into (B, C, h, w) by
a hand-written reshape, the maps are that map normalized and upsampled, and Grad-CAM's
weights are the mean of gradients taken with our own ``torch.autograd.grad``.

The methods are collected from ``camkit.list_methods()``, so methods added later (built-in or
installed plugins) join the matrix without edits here. The full matrix is ``slow``
(``nox -s matrix``); a small subset runs by default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision import models as tvm

import camkit
from camkit.engine.accel import inference_copy
from camkit.errors import LayerError

from .reference import Reader, normalized_upsampled, reference_capture


def _channels_first(t: Tensor) -> Tensor:
    return t


def _vit() -> nn.Module:
    model = tvm.vit_b_16(weights=None, image_size=48)
    # torchvision initializes ViT's head to zeros: every logit is 0 and every gradient vanishes,
    # which would make all gradient maps trivially empty.
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@dataclass(frozen=True)
class Arch:
    """One architecture of the matrix and what camkit must make of it."""

    build: Callable[[], nn.Module]
    size: int
    layer: str | None  # None: auto-located
    resolved: str  # the dotted name camkit must resolve ``layer`` to
    grid: tuple[int, ...]  # spatial size of the layer's map
    read: Reader = _channels_first  # the raw layer output read into (B, C, h, w) by hand
    cam_applies: bool = True  # False: CAM must refuse the layer with a LayerError


ARCHS: dict[str, Arch] = {
    "resnet18": Arch(lambda: tvm.resnet18(weights=None), 64, None, "layer4", (2, 2)),
    # The last conv: the in-place ReLU after it overwrites the tensor the conv returned.
    "vgg11": Arch(
        lambda: tvm.vgg11(weights=None),
        64,
        "features[-3]",
        "features.18",
        (4, 4),
        cam_applies=False,
    ),
    # `features` ends in a BatchNorm whose output DenseNet's forward ReLUs in place.
    "densenet121": Arch(lambda: tvm.densenet121(weights=None), 64, None, "features", (2, 2)),
    # Two Linears in the head (576 -> 1024 -> classes): CAM does not apply.
    "mobilenet_v3_small": Arch(
        lambda: tvm.mobilenet_v3_small(weights=None),
        64,
        None,
        "features",
        (2, 2),
        cam_applies=False,
    ),
    "efficientnet_b0": Arch(
        lambda: tvm.efficientnet_b0(weights=None), 64, None, "features", (2, 2)
    ),
    "convnext_tiny": Arch(lambda: tvm.convnext_tiny(weights=None), 64, None, "features", (2, 2)),
    # (B, 1 + 3 * 3, 768) tokens: the class token is dropped and the rest read row-major.
    "vit_b_16": Arch(
        _vit,
        48,
        "encoder.layers[-1].ln_1",
        "encoder.layers.encoder_layer_11.ln_1",
        (3, 3),
        read=lambda t: t[:, 1:].reshape(t.shape[0], 3, 3, t.shape[2]).permute(0, 3, 1, 2),
        cam_applies=False,  # the head reads the class token
    ),
    # (B, 2, 2, 768) channels-last. 48 px keeps the grid 2x2 and pads windows least.
    "swin_t": Arch(
        lambda: tvm.swin_t(weights=None),
        48,
        "features",
        "features",
        (2, 2),
        read=lambda t: t.permute(0, 3, 1, 2),
    ),
}

#: Methods that read a ViT block's attention: every layer of the matrix (the ViT's is a
#: LayerNorm) holds no attention block, so each must refuse with a LayerError saying so.
ATTENTION_METHODS = {"legrad"}

#: Small configs keep the matrix within minutes; applied to every method whose Config has the
#: field, so methods added later get them too.
SMALL_CONFIG: dict[str, Any] = {"batch_size": 64, "num_samples": 2, "seed": 0, "k": 1.0}


#: Methods built on input gradients: their map is at the input's resolution.
INPUT_MAPS = {"fullgrad", "guidedbackprop", "guidedgradcam"}


def _config(method: str) -> dict[str, Any]:
    fields = camkit.method_info(method).config.model_fields
    return {key: value for key, value in SMALL_CONFIG.items() if key in fields}


def _perturbation(method: str) -> bool:
    """Whether a method forwards one perturbed input per channel (the expensive kind)."""
    info = camkit.method_info(method)
    return not info.needs_gradients and "batch_size" in info.config.model_fields


METHODS = camkit.list_methods()
#: The default run: every method on MobileNetV3 (cheap forwards), the cheap methods on
#: ResNet-18, and Grad-CAM on the channels-last Swin.
FAST = {
    *(("mobilenet_v3_small", m) for m in METHODS),
    *(("resnet18", m) for m in METHODS if not _perturbation(m)),
    ("swin_t", "gradcam"),
}
#: Score-CAM's masked-input scoring with other masks (noisy, integrated): on the large
#: architectures they would re-run Score-CAM's path, which runs there, at several times its
#: cost, so they run on ResNet-18 and MobileNetV3 only.
SCORECAM_VARIANTS = {"sscam", "iscam"}
SMALL_ARCHS = {"resnet18", "mobilenet_v3_small"}
CASES = [
    pytest.param(arch, method, marks=() if (arch, method) in FAST else pytest.mark.slow)
    for arch in ARCHS
    for method in METHODS
    if arch in SMALL_ARCHS or method not in SCORECAM_VARIANTS
]


@functools.lru_cache(maxsize=1)
def _model(arch: str) -> nn.Module:
    # Cases run grouped by architecture, so one cached model at a time is built once.
    torch.manual_seed(0)
    return ARCHS[arch].build().eval()


def _inputs(arch: str, batch: int) -> Tensor:
    size = ARCHS[arch].size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("arch", "method"), CASES)
def test_method_on_architecture(arch: str, method: str) -> None:
    spec, model = ARCHS[arch], _model(arch)
    # Perturbation methods forward one masked copy per channel: one image keeps them quick.
    x = _inputs(arch, 1 if _perturbation(method) else 2)
    extractor = camkit.create(method, model, spec.layer, progress=False, **_config(method))

    if method == "cam" and not spec.cam_applies:
        with pytest.raises(LayerError, match="CAM"):
            extractor(x)
        return
    if method in ATTENTION_METHODS:
        with pytest.raises(LayerError, match="attention"):
            extractor(x)
        return
    res = extractor(x)

    module = dict(model.named_modules())[spec.resolved]
    acts, _, scores = reference_capture(
        model, module, x, lambda s: s.gather(1, s.argmax(1, keepdim=True)), spec.read
    )
    assert res.layers == [spec.resolved]
    torch.testing.assert_close(res.scores, scores, rtol=1e-5, atol=1e-5)
    assert torch.equal(res.targets, scores.argmax(1))

    layer_map = res.layer_maps[spec.resolved]
    grid = tuple(x.shape[2:]) if method in INPUT_MAPS else spec.grid
    assert layer_map.shape == (x.shape[0], *grid)
    if spec.resolved in res.weights:
        weights = res.weights[spec.resolved]
        summed = (
            torch.einsum("bc,bc...->b...", weights, acts)
            if weights.dim() == 2
            else (weights * acts).sum(1)
        )
        expected = torch.relu(summed) if camkit.method_info(method).cls.relu else summed
        torch.testing.assert_close(
            layer_map, expected, rtol=1e-4, atol=1e-5 * float(summed.abs().max())
        )
        # Random-weight models may give an all-negative sum (an empty map after ReLU); what
        # must never happen is weights or a weighted sum that carry no information.
        assert bool((weights.flatten(1).abs().amax(1) > 0).all()), "all-zero weights"
        informative = summed
    else:
        informative = layer_map
    flat = informative.flatten(1)
    assert bool((flat.amax(1) > flat.amin(1)).all()), "a constant map explains nothing"

    maps = res.maps
    assert maps.shape == (x.shape[0], spec.size, spec.size) and maps.dtype == torch.float32
    assert bool(torch.isfinite(maps).all()) and maps.min() >= 0 and maps.max() <= 1
    torch.testing.assert_close(maps, normalized_upsampled(layer_map, (spec.size, spec.size)))


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=() if a == "swin_t" else pytest.mark.slow) for a in ARCHS]
)
def test_gradcam_weights_match_own_gradients(arch: str) -> None:
    spec, model = ARCHS[arch], _model(arch)
    x = _inputs(arch, 2)
    res = camkit.create("gradcam", model, spec.layer)(x, targets=[3, 7])

    module = dict(model.named_modules())[spec.resolved]
    targets = torch.tensor([[3], [7]])
    acts, grads, _ = reference_capture(
        model, module, x, lambda s: s.gather(1, targets).squeeze(1), spec.read
    )
    weights = grads.flatten(2).mean(2)
    torch.testing.assert_close(res.weights[spec.resolved], weights, rtol=1e-4, atol=1e-9)
    expected = torch.relu(torch.einsum("bc,bchw->bhw", weights, acts))
    torch.testing.assert_close(
        res.layer_maps[spec.resolved], expected, rtol=1e-4, atol=1e-5 * float(expected.max())
    )


#: What auto-location picks: the last feature map the top score depends on (no pooling layer).
AUTO_LOCATED = {
    "resnet18": "layer4",
    "vgg11": "features",
    "densenet121": "features",
    "mobilenet_v3_small": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
    # The input norm of the last block: the class token reads the patches through its attention.
    "vit_b_16": "encoder.layers.encoder_layer_11.ln_1",
    # torchvision's Swin permutes its channels-last features to (B, C, h, w) before pooling.
    "swin_t": "permute",
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_auto_location(arch: str) -> None:
    res = camkit.create("gradcam", _model(arch))(_inputs(arch, 1))
    assert res.layers == [AUTO_LOCATED[arch]]
    assert bool(torch.isfinite(res.maps).all())


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param(a, marks=() if a in ("resnet18", "mobilenet_v3_small") else pytest.mark.slow)
        for a in ARCHS
    ],
)
def test_bf16_inference_copy_computes_what_the_model_computes(arch: str) -> None:
    """precision="bf16" forwards a traced copy with batch norms folded, activations fused
    and global pools rewritten: in float32 that copy must compute the model's scores."""
    model = _model(arch)
    x = _inputs(arch, 2)
    folded = inference_copy(model, torch.float32)
    assert folded is not None, "every architecture of the matrix traces"
    with torch.no_grad():
        expected = model(x)
        got = folded(x)
        fast = inference_copy(model)(x.to(torch.bfloat16)).float()  # type: ignore[misc]
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
    r = torch.corrcoef(torch.stack([fast.flatten(), expected.flatten()]))[0, 1]
    assert float(r) > 0.999
