"""Transformer layers: token outputs read as grids, channels-last outputs permuted.

Every layout conversion is checked against a reshape written out by hand from a known grid,
and end to end against Grad-CAM computed from our own hook on small ViT- and Swin-shaped
models (torchvision's own classes, made small, and a ViT with register tokens that takes any
input size).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchvision import models as tvm

import camkit
from camkit.engine.outputs import to_channels_first
from camkit.errors import ConfigError, LayerError

from .reference import reference_capture


def _grid(b: int, c: int, h: int, w: int) -> Tensor:
    """A (B, C, h, w) grid whose every entry is distinct, so a misplaced token shows."""
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def _tokens(grid: Tensor, prefix: int) -> Tensor:
    """The (B, prefix + h * w, C) token sequence of a grid: prefix tokens, then patches in
    row-major order, as ViTs lay them out."""
    b, c, h, w = grid.shape
    patches = [grid[:, :, i, j] for i in range(h) for j in range(w)]
    leading = [torch.full((b, c), -1.0 - k) for k in range(prefix)]
    return torch.stack(leading + patches, dim=1)


@pytest.mark.parametrize(
    ("prefix", "h", "w", "input_size"),
    [
        (0, 4, 4, (64, 64)),
        (1, 14, 14, (224, 224)),  # ViT-B/16 at 224: class token + 196 patches
        (5, 16, 16, (256, 256)),  # class token + 4 registers
        (1, 2, 4, (32, 64)),  # non-square, patch 16
        (3, 4, 8, (32, 64)),  # non-square, patch 8, class + 2 registers
        (1, 6, 3, (100, 60)),  # sides not multiples of the patch (16): floor(100/16) = 6
        (0, 2, 2, (60, 60)),  # padded up to a multiple of the window: ceil(60/32) = 2
    ],
)
def test_tokens_form_the_grid_of_the_input(
    prefix: int, h: int, w: int, input_size: tuple[int, int]
) -> None:
    grid = _grid(2, 3, h, w)
    tokens = _tokens(grid, prefix)
    assert torch.equal(to_channels_first(tokens, input_size=input_size), grid)
    assert torch.equal(to_channels_first(tokens, "tokens", (h, w), input_size), grid)


def test_given_grid_overrides_inference() -> None:
    grid = _grid(1, 2, 3, 5)
    tokens = _tokens(grid, 2)
    assert torch.equal(to_channels_first(tokens, grid=(3, 5)), grid)


@pytest.mark.parametrize(
    ("tokens", "grid", "input_size", "match"),
    [
        (torch.zeros(1, 10, 4), (4, 4), (64, 64), "10 tokens, which do not hold a 4x4 grid"),
        # 21 = 16 patches + 5 prefix tokens: too many prefix tokens to guess.
        (torch.zeros(1, 21, 4), None, (32, 32), "no grid of them matches"),
        (torch.zeros(1, 17, 4), None, (4, 64, 64), "2-D grid of an image only"),
    ],
)
def test_unreadable_tokens_raise(
    tokens: Tensor, grid: tuple[int, int] | None, input_size: tuple[int, ...], match: str
) -> None:
    with pytest.raises(LayerError, match=match):
        to_channels_first(tokens, "auto", grid, input_size, "blocks.3")


@pytest.mark.parametrize(
    ("shape", "input_size"),
    [
        ((2, 3, 2, 2), (64, 64)),  # Swin-T at 64 px: (B, 2, 2, 768) read as (B, 768, 2, 2)
        ((2, 5, 4, 8), (32, 64)),
        ((2, 5, 8, 4), (64, 32)),
        ((2, 7, 4, 4), None),
    ],
)
def test_channels_last_is_permuted(shape: tuple[int, ...], input_size: tuple[int, int]) -> None:
    b, c, h, w = shape
    grid = _grid(b, c, h, w)
    channels_last = torch.stack([grid[:, k] for k in range(c)], dim=-1)
    assert torch.equal(to_channels_first(channels_last, input_size=input_size), grid)
    assert torch.equal(to_channels_first(channels_last, "nhwc"), grid)


@pytest.mark.parametrize(
    ("shape", "input_size"),
    [
        ((2, 768, 2, 2), (64, 64)),
        # As many channels as rows, on a non-square input: the aspect ratio says channels-first.
        ((2, 4, 4, 8), (32, 64)),
        ((2, 64, 8, 16), (64, 128)),
    ],
)
def test_channels_first_is_kept(shape: tuple[int, ...], input_size: tuple[int, int]) -> None:
    t = torch.randn(shape)
    assert to_channels_first(t, input_size=input_size) is t
    assert to_channels_first(t, "nchw", input_size=input_size) is t


def test_channels_last_video_with_nhwc() -> None:
    video = torch.randn(2, 3, 4, 5, 6)  # (B, C, T, H, W)
    channels_last = torch.stack([video[:, k] for k in range(3)], dim=-1)
    assert torch.equal(to_channels_first(channels_last, "nhwc"), video)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"layout": "NCHW"}, "layout must be one of"),
        ({"grid": (4,)}, "grid must be"),
        ({"grid": (0, 4)}, "grid must be"),
        ({"grid": (2.0, 4)}, "grid must be"),
    ],
)
def test_bad_layout_options_raise_at_create(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        camkit.create("gradcam", nn.Conv2d(3, 3, 1), **options)


# -- end to end ------------------------------------------------------------------------------


class RegisterViT(nn.Module):
    """A ViT with a class token and two register tokens that takes any input size: patch
    embedding (patch 8), learned prefix tokens, two encoder layers, a head on the class token."""

    def __init__(self, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.prefix = nn.Parameter(torch.randn(1, 3, dim))
        self.blocks = nn.Sequential(
            *(
                nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
                for _ in range(2)
            )
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(len(x), -1, -1), patches], dim=1)
        return self.head(self.blocks(tokens)[:, 0])


def _gradcam_reference(
    model: nn.Module, module: nn.Module, x: Tensor, targets: list[int], read
) -> Tensor:
    index = torch.tensor(targets).unsqueeze(1)
    acts, grads, _ = reference_capture(
        model, module, x, lambda s: s.gather(1, index).squeeze(1), read
    )
    weights = grads.flatten(2).mean(2)
    return torch.relu(torch.einsum("bc,bchw->bhw", weights, acts))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 64), (48, 24)])
def test_gradcam_on_register_vit_matches_hand_reshape(height: int, width: int) -> None:
    torch.manual_seed(0)
    model = RegisterViT().eval()
    x = torch.randn(2, 3, height, width)
    h, w = height // 8, width // 8

    def read(t: Tensor) -> Tensor:
        return t[:, 3:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    expected = _gradcam_reference(model, model.blocks[0], x, [1, 4], read)
    for grid in (None, (h, w)):
        res = camkit.create("gradcam", model, "blocks[0]", grid=grid)(x, targets=[1, 4])
        torch.testing.assert_close(res.layer_maps["blocks.0"], expected, rtol=1e-4, atol=1e-6)
        assert res.maps.shape == (2, height, width)
        assert float(expected.amax()) > 0


def _small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = tvm.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )
    # torchvision zero-initializes the head, which zeroes every gradient.
    nn.init.normal_(model.heads.head.weight)
    return model.eval()


def test_gradcam_on_torchvision_vit_last_block_norm() -> None:
    model = _small_vit()
    x = torch.randn(2, 3, 32, 32)

    def read(t: Tensor) -> Tensor:
        return t[:, 1:].reshape(2, 4, 4, 16).permute(0, 3, 1, 2)

    expected = _gradcam_reference(model, model.encoder.layers[-1].ln_1, x, [0, 3], read)
    res = camkit.create("gradcam", model, "encoder.layers[-1].ln_1")(x, targets=[0, 3])
    assert res.layers == ["encoder.layers.encoder_layer_1.ln_1"]
    torch.testing.assert_close(res.layer_maps[res.layers[0]], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 0


def test_vit_final_norm_gives_patch_tokens_no_gradient() -> None:
    # The head reads only the class token of encoder.ln's output, so the patch tokens of that
    # output get exactly zero gradient and every gradient map there is empty (docs/transformers).
    model = _small_vit()
    x = torch.randn(2, 3, 32, 32)
    _, grads, _ = reference_capture(
        model, model.encoder.ln, x, lambda s: s[:, 0], lambda t: t[:, 1:]
    )
    assert torch.count_nonzero(grads) == 0
    res = camkit.create("gradcam", model, "encoder.ln")(x, targets=0)
    assert torch.count_nonzero(res.weights["encoder.ln"]) == 0
    assert torch.count_nonzero(res.maps) == 0


@pytest.mark.parametrize(("height", "width"), [(32, 32), (32, 64)])
def test_gradcam_on_torchvision_swin_channels_last(height: int, width: int) -> None:
    torch.manual_seed(0)
    model = tvm.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=5,
    ).eval()
    x = torch.randn(2, 3, height, width)
    expected = _gradcam_reference(model, model.features, x, [2, 0], lambda t: t.permute(0, 3, 1, 2))
    res = camkit.create("gradcam", model, "features")(x, targets=[2, 0])
    assert res.layer_maps["features"].shape == (2, height // 8, width // 8)
    torch.testing.assert_close(res.layer_maps["features"], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 0


class PooledViT(RegisterViT):
    """RegisterViT's tokens, but a head on the average of the patch tokens: CAM's shape."""

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(len(x), -1, -1), patches], dim=1)
        return self.head(self.blocks(tokens)[:, 3:].mean(1))


def test_cam_refuses_a_token_layer_whose_head_reads_a_class_token() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(LayerError, match="3 leading class or register token"):
        camkit.create("cam", RegisterViT().eval(), "blocks[1]")(x)
    with pytest.raises(
        LayerError, match=r"CAM cannot use layer 'encoder\.layers\.encoder_layer_1'"
    ):
        camkit.create("cam", _small_vit(), "encoder.layers[-1]")(x)


def test_cam_on_patch_tokens_with_a_pooled_head_when_told_the_classifier() -> None:
    # The same prefix tokens, but the head averages the patches: with fc_layer named, CAM is
    # exact, sum_k w_k A_k over the 4 x 4 patch grid (the prefix tokens are not in the grid).
    torch.manual_seed(0)
    model = PooledViT().eval()
    x = torch.randn(2, 3, 32, 32)
    res = camkit.create("cam", model, "blocks[1]", fc_layer="head")(x, targets=[1, 4])

    def read(t: Tensor) -> Tensor:
        return t[:, 3:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    acts, _, _ = reference_capture(model, model.blocks[1], x, lambda s: s[:, 0], read)
    weights = model.head.weight.detach()[[1, 4]]
    expected = torch.relu(torch.einsum("bc,bchw->bhw", weights, acts))
    torch.testing.assert_close(res.layer_maps["blocks.1"], expected, rtol=1e-4, atol=1e-6)
    assert res.weights["blocks.1"].shape == (2, 16)


@pytest.mark.parametrize(
    ("name", "prefix"), [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)]
)
def test_auto_layer_on_timm_vits_gives_token_grid_maps(name: str, prefix: int) -> None:
    # Issue 13: auto-location once took the attention's key tensor, (B, heads, N, head_dim),
    # for a map. It must take the last block's input norm and read its patch tokens.
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=64, depth=2).eval()
    x = torch.randn(2, 3, 64, 64)

    def read(t: Tensor) -> Tensor:
        return t[:, prefix:].reshape(2, 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    res = camkit.create("gradcam", model)(x, targets=[3, 7])
    assert res.layers == ["blocks.1.norm1"]
    expected = _gradcam_reference(model, model.blocks[1].norm1, x, [3, 7], read)
    torch.testing.assert_close(res.layer_maps["blocks.1.norm1"], expected, rtol=1e-4, atol=1e-6)
    assert float(expected.amax()) > 0 and res.maps.shape == (2, 64, 64)
