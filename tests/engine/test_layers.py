"""Layer resolution: names, indices, modules, lists, auto-location, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.layers import locate, resolve, resolve_all
from camkit.errors import LayerError, LayerNotFoundError


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("layer4", "layer4"),
        ("layer4.1.conv2", "layer4.1.conv2"),
        ("layer4[-1]", "layer4.1"),
        ("layer4[0].conv1", "layer4.0.conv1"),
        ("layer4[-1].bn2", "layer4.1.bn2"),
        ("layer3[1][0]", "layer3.1.conv1"),
    ],
)
def test_names_and_indices(resnet18, spec, name):
    assert resolve(resnet18, spec) == (name, resnet18.get_submodule(name))


def test_negative_index_into_sequential(vgg11):
    assert resolve(vgg11, "features[-1]") == ("features.20", vgg11.features[20])
    assert resolve(vgg11, "features[-3]") == ("features.18", vgg11.features[18])


def test_module_object(resnet18):
    assert resolve(resnet18, resnet18.layer3[1].conv2) == (
        "layer3.1.conv2",
        resnet18.layer3[1].conv2,
    )


def test_list_keeps_order_and_drops_duplicates(resnet18):
    layers = resolve_all(resnet18, ["layer4", resnet18.layer3, "layer4[-1]", "layer4"])
    assert [name for name, _ in layers] == ["layer4", "layer3", "layer4.1"]


def test_unknown_name_suggests_close_matches(resnet18):
    with pytest.raises(LayerNotFoundError) as info:
        resolve(resnet18, "layer5")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "no layer 'layer5' in ResNet" in message
    assert "Did you mean" in message and "'layer4'" in message


def test_unknown_nested_name_names_the_failing_step(resnet18):
    with pytest.raises(KeyError, match=r"no layer 'layer4.1.conv3'.*Did you mean 'layer4.1.conv"):
        resolve(resnet18, "layer4.1.conv3")


def test_index_out_of_range(resnet18):
    with pytest.raises(LayerNotFoundError, match=r"layer4 has 2 children, so index 2 is out"):
        resolve(resnet18, "layer4[2]")


def test_unparsable_name(resnet18):
    with pytest.raises(LayerNotFoundError, match="cannot parse"):
        resolve(resnet18, "layer4[x]")


def test_module_not_in_model(resnet18):
    with pytest.raises(LayerNotFoundError, match="Conv2d passed as layer is not a submodule"):
        resolve(resnet18, nn.Conv2d(3, 3, 1))


def test_wrong_kind_and_empty_list(resnet18):
    with pytest.raises(LayerNotFoundError, match="not int"):
        resolve(resnet18, 4)  # type: ignore[arg-type]
    with pytest.raises(LayerNotFoundError, match="empty list"):
        resolve_all(resnet18, [])


def test_create_reports_a_missing_layer_immediately(tiny):
    with pytest.raises(LayerNotFoundError, match="Did you mean 'features'"):
        camkit.create("gradcam", tiny, "feature")


def test_locate_finds_the_last_spatial_output(resnet18, tiny):
    assert locate(resnet18, torch.zeros(1, 3, 64, 64))[0] == "layer4"
    # The pooled (B, C, 1, 1) output has no spatial extent; the Sequential finishes last.
    assert locate(tiny, torch.zeros(1, 3, 32, 32))[0] == "features"


def test_locate_without_spatial_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    with pytest.raises(LayerError, match="pass layer="):
        locate(model, torch.zeros(1, 3, 2, 2))


class CountingNet(nn.Module):
    """Wraps a model and counts its forward passes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


def test_auto_locate_on_first_input(tiny, x32, no_hooks):
    model = CountingNet(tiny)
    cam = camkit.create("gradcam", model)
    assert cam.layers is None and model.calls == 0  # no dummy forward without input_shape

    res = cam(x32, targets=[0, 1])

    assert cam.layers == ["inner.features"]
    explicit = camkit.create("gradcam", model, "inner.features")(x32, targets=[0, 1])
    torch.testing.assert_close(res.maps, explicit.maps, atol=0, rtol=0)
    no_hooks(model)


def test_auto_locate_with_input_shape(tiny, x32):
    model = CountingNet(tiny)
    cam = camkit.create("gradcam", model, input_shape=(3, 32, 32))
    assert cam.layers == ["inner.features"] and model.calls == 1

    cam(x32, targets=[0, 1])
    assert model.calls == 2  # located once, at creation


def test_multi_layer_maps_are_the_fusion_of_layer_maps(tiny, x32, ref):
    layers = ["features.0", "features.3"]
    res = camkit.create("gradcam", tiny, layers)(x32, targets=[1, 2])

    assert list(res.layer_maps) == layers
    assert res.layer_maps["features.0"].shape == (2, 32, 32)
    assert res.layer_maps["features.3"].shape == (2, 16, 16)
    for name in layers:
        layer_map, _ = ref.gradcam(tiny, tiny.get_submodule(name), x32, ref.pick([1, 2]))
        torch.testing.assert_close(res.layer_maps[name], layer_map, atol=1e-5, rtol=1e-5)
    # Reference fusion: normalize each, upsample (bilinear) to the input, element-wise max.
    expected = torch.maximum(
        ref.upsample(ref.normalize(res.layer_maps["features.0"]), (32, 32)),
        ref.upsample(ref.normalize(res.layer_maps["features.3"]), (32, 32)),
    )
    torch.testing.assert_close(res.maps, expected, atol=1e-6, rtol=0)
    assert not torch.equal(res.maps, ref.normalize(res.layer_maps["features.0"]))


# -- auto-location on real architectures (weights=None / pretrained=False) -----------------

timm = pytest.importorskip("timm")
tvm = pytest.importorskip("torchvision.models")


def _tv(name: str, **kwargs: object) -> nn.Module:
    return tvm.get_model(name, weights=None, **kwargs).eval()


def _timm(name: str, **kwargs: object) -> nn.Module:
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _tv_vit() -> nn.Module:
    # torchvision's ViT starts with a zero head: no gradient flows, so the structural rule (the
    # input of the last attention) decides.
    return tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


def _tv_swin() -> nn.Module:
    return tvm.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=[4, 4]
    ).eval()


_SMALL_VIT = {"img_size": 64, "depth": 2}
_SMALL_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)}
slow = pytest.mark.slow

#: (builder, input side, the layer auto-location must pick, the token/patch grid of its map)
LOCATED = {
    "tv-resnet18": (lambda: _tv("resnet18"), 64, "layer4", (2, 2)),
    "tv-mobilenet_v3_small": (lambda: _tv("mobilenet_v3_small"), 64, "features", (2, 2)),
    "tv-efficientnet_b0": (lambda: _tv("efficientnet_b0"), 64, "features", (2, 2)),
    "tv-regnet_y_400mf": (lambda: _tv("regnet_y_400mf"), 64, "trunk_output", (2, 2)),
    "tv-vgg11": (lambda: _tv("vgg11"), 64, "features", (2, 2)),
    "tv-densenet121": (lambda: _tv("densenet121"), 64, "features", (2, 2)),
    "tv-convnext_tiny": (lambda: _tv("convnext_tiny"), 64, "features", (2, 2)),
    "tv-mobilenet_v2": (lambda: _tv("mobilenet_v2"), 64, "features", (2, 2)),
    "tv-vit": (_tv_vit, 32, "encoder.layers.encoder_layer_1.ln_1", (4, 4)),
    "tv-swin": (_tv_swin, 32, "permute", (4, 4)),
    "timm-resnet18": (lambda: _timm("resnet18"), 64, "layer4", (2, 2)),
    "timm-vit_tiny": (
        lambda: _timm("vit_tiny_patch16_224", **_SMALL_VIT),
        64,
        "blocks.1.norm1",
        (4, 4),
    ),
    "timm-deit_tiny": (
        lambda: _timm("deit_tiny_patch16_224", **_SMALL_VIT),
        64,
        "blocks.1.norm1",
        (4, 4),
    ),
    "timm-deit_tiny_distilled": (
        lambda: _timm("deit_tiny_distilled_patch16_224", **_SMALL_VIT),
        64,
        "blocks.1.norm1",
        (4, 4),
    ),
    # EVA-02 averages its patch tokens: their last map is the (identity) final norm's.
    "timm-eva02_tiny": (
        lambda: _timm("eva02_tiny_patch14_224", img_size=56, depth=2),
        56,
        "norm",
        (4, 4),
    ),
    "timm-eva02_tiny_token": (
        lambda: _timm("eva02_tiny_patch14_224", img_size=56, depth=2, global_pool="token"),
        56,
        "blocks.1.norm1",
        (4, 4),
    ),
    "timm-swin_tiny": (
        lambda: _timm("swin_tiny_patch4_window7_224", **_SMALL_SWIN),
        224,
        "norm",
        (7, 7),
    ),
    "timm-convnext_atto": (lambda: _timm("convnext_atto"), 64, "norm_pre", (2, 2)),
    "timm-efficientnet_b0": (lambda: _timm("efficientnet_b0"), 64, "bn2", (2, 2)),
    "timm-regnetx_002": (lambda: _timm("regnetx_002"), 64, "final_conv", (2, 2)),
    "timm-mobilenetv3_small_050": (lambda: _timm("mobilenetv3_small_050"), 64, "blocks", (2, 2)),
    "timm-densenet121": (lambda: _timm("densenet121"), 64, "features", (2, 2)),
    "timm-vgg11": (lambda: _timm("vgg11"), 64, "features", (2, 2)),
}
FAST = {"tv-resnet18", "tv-mobilenet_v3_small", "tv-vit", "tv-swin", "timm-resnet18"} | {
    "timm-vit_tiny",
    "timm-deit_tiny_distilled",
    "timm-eva02_tiny",
    "timm-eva02_tiny_token",
    "timm-swin_tiny",
}


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=() if c in FAST else slow) for c in LOCATED]
)
def test_locate_on_architectures(case, no_hooks):
    build, side, layer, grid = LOCATED[case]
    torch.manual_seed(0)
    model = build()
    x = torch.rand(1, 3, side, side)
    name, module = locate(model, x)
    assert name == layer and module is model.get_submodule(layer)
    no_hooks(model)
    # The located layer gives a map on the model's own grid, not a head's or an attention's.
    res = camkit.create("gradcam", model)(x)
    assert res.layers == [layer]
    assert res.layer_maps[layer].shape == (1, *grid)


class QKVNet(nn.Module):
    """Tokens whose attention exposes its key tensor as a 4-D module output, ``(B, heads, N,
    head_dim)``, after the block's input norm; then the class token is read."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.norm1 = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.k_norm = nn.LayerNorm(4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = self.norm1(torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1))
        keys = self.k_norm(tokens.reshape(len(x), -1, 2, 4).transpose(1, 2))  # (B, 2, N, 4)
        mixed, _ = self.attn(tokens, tokens, tokens)
        return self.head(mixed[:, 0] + keys.mean((1, 2)).sum(-1, keepdim=True))


def test_locate_never_picks_a_key_tensor_or_the_head(no_hooks):
    torch.manual_seed(0)
    model = QKVNet().eval()
    assert locate(model, torch.rand(2, 3, 32, 32))[0] == "norm1"
    no_hooks(model)


def test_locate_leaves_the_model_and_its_gradients_alone(tiny):
    for p in tiny.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    with torch.inference_mode():
        assert locate(tiny, torch.rand(2, 3, 32, 32))[0] == "features"
    assert all(p.grad is None and not p.requires_grad for p in tiny.parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def _hf_vit(transformers):
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config), 32, (4, 4)


def _hf_swin(transformers):
    config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4
    )
    return transformers.SwinForImageClassification(config), 32, (4, 4)


def _hf_convnext(transformers):
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
    return transformers.ConvNextForImageClassification(config), 64, (2, 2)


@pytest.mark.parametrize(
    ("build", "suffix"),
    [
        # The class token reads the patches through the last block's attention, whose input
        # norm is the last map with patch gradients (module paths differ between versions).
        (_hf_vit, ".1.layernorm_before"),
        (_hf_swin, "swin.layernorm"),  # averages its tokens: the final norm
        (_hf_convnext, "convnext.encoder.stages.3"),
    ],
)
def test_transformers_image_classifiers_auto_layer(build, suffix, no_hooks):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, side, grid = build(transformers)
    model.eval()
    x = torch.rand(1, 3, side, side)
    name, _ = locate(model, x)
    assert name.endswith(suffix)
    assert len([n for n, _ in model.named_modules() if n.endswith(suffix)]) == 1
    res = camkit.create("gradcam", model)(x)
    assert res.layers == [name] and res.layer_maps[name].shape == (1, *grid)
    no_hooks(model)
