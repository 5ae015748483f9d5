"""LeGrad against a direct re-implementation (each ViT run by hand, block by block, with its
attention probabilities as explicit tensors) and against torchcam 0.5.0's LeGrad."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.errors import ConfigError, LayerError
from camkit.testing import check_method, no_hooks_left, tiny_inputs, tiny_model

torchvision = pytest.importorskip("torchvision")
TARGETS = [3, 7]


def tv_vit(seed: int = 0) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
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


def timm_vit(seed: int = 0, **kw) -> nn.Module:
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=16, depth=3, num_heads=2, num_classes=10, **kw
        )
    return model.eval()


def attend(x: Tensor, w: Tensor, b: Tensor | None, heads: int) -> tuple[Tensor, Tensor]:
    """Self-attention by hand: ``(P, P v)`` with ``P`` a leaf of the autograd graph."""
    n, d = x.shape[1], x.shape[2]
    q, k, v = F.linear(x, w, b).chunk(3, dim=-1)
    q, k, v = (t.view(x.shape[0], n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    p = (q @ k.transpose(-2, -1) / math.sqrt(d // heads)).softmax(-1).detach().requires_grad_()
    return p, (p @ v).transpose(1, 2).reshape(x.shape[0], n, d)


def tv_blocks(model: nn.Module, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """torchvision's ViT by hand: per block (P, output tokens), and the model's output."""
    z = model._process_input(x)
    z = torch.cat([model.class_token.expand(z.shape[0], -1, -1), z], 1)
    z = z + model.encoder.pos_embedding
    probs, outs = [], []
    for block in model.encoder.layers:
        attn = block.self_attention
        p, y = attend(block.ln_1(z), attn.in_proj_weight, attn.in_proj_bias, attn.num_heads)
        z = z + attn.out_proj(y)
        z = z + block.mlp(block.ln_2(z))
        probs.append(p)
        outs.append(z)
    return probs, outs, model.heads(model.encoder.ln(z)[:, 0])


def timm_blocks(model: nn.Module, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    z = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    probs, outs = [], []
    for block in model.blocks:
        attn = block.attn
        p, y = attend(block.norm1(z), attn.qkv.weight, attn.qkv.bias, attn.num_heads)
        z = z + block.ls1(attn.proj(y))
        z = z + block.ls2(block.mlp(block.norm2(z)))
        probs.append(p)
        outs.append(z)
    return probs, outs, model.forward_head(model.norm(z))


def reference(model, x, blocks, head, by_hand, last=None) -> Tensor:
    """``mean_l mean_{h,q} relu(d s^l / d P^l)`` over the patch keys, on the 4 x 4 grid."""
    probs, outs, logits = by_hand(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)  # the hand-run is right
    maps = []
    for p, z in list(zip(probs, outs))[-(last or len(probs)) :]:
        s = head(z.mean(1))[torch.arange(x.shape[0]), TARGETS].sum()
        (g,) = torch.autograd.grad(s, p, retain_graph=True)
        maps.append(g.clamp_min(0).mean((1, 2))[:, 1:])
    return torch.stack(maps).mean(0).reshape(x.shape[0], 4, 4).detach()


def test_torchvision_matches_the_hand_run() -> None:
    model, x = tv_vit(), tiny_inputs(size=32)
    ours = camkit.create("legrad", model, "encoder.layers")(x, TARGETS).layer_maps
    expected = reference(model, x, 3, lambda m: model.heads(model.encoder.ln(m)), tv_blocks)
    torch.testing.assert_close(ours["encoder.layers"], expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().max() > 0


@pytest.mark.parametrize("last", [1, 2])
def test_last_blocks_and_one_block(last: int) -> None:
    model, x = tv_vit(), tiny_inputs(size=32)
    head = lambda m: model.heads(model.encoder.ln(m))  # noqa: E731
    expected = reference(model, x, 3, head, tv_blocks, last=last)
    ours = camkit.create("legrad", model, "encoder.layers", blocks=last)(x, TARGETS)
    torch.testing.assert_close(ours.layer_maps["encoder.layers"], expected, rtol=1e-4, atol=1e-7)
    if last == 1:  # the last block given as the layer itself
        block = "encoder.layers.encoder_layer_2"
        alone = camkit.create("legrad", model, block)(x, TARGETS).layer_maps[block]
        torch.testing.assert_close(alone, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_matches_the_hand_run(pool: str) -> None:
    model, x = timm_vit(global_pool=pool), tiny_inputs(size=32)
    fused = [b.attn.fused_attn for b in model.blocks]
    ours = camkit.create("legrad", model, "blocks")(x, TARGETS).layer_maps["blocks"]
    assert [b.attn.fused_attn for b in model.blocks] == fused  # restored
    head = lambda m: model.head(model.fc_norm(model.norm(m)))  # noqa: E731
    expected = reference(model, x, 3, head, timm_blocks)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("make", [tv_vit, timm_vit])
def test_model_left_as_it_was_and_no_hooks(make) -> None:
    model = make()
    layer = "encoder.layers" if hasattr(model, "encoder") else "blocks"
    check_method("legrad", model, layer, inputs=tiny_inputs(size=32))
    frozen = make().requires_grad_(False)  # a frozen model: the graph starts at P
    check_method("legrad", frozen, layer, inputs=tiny_inputs(size=32))


def test_hooks_removed_when_the_model_raises() -> None:
    model, x = tv_vit(), tiny_inputs(size=32)

    def boom(*_args: object) -> None:
        raise RuntimeError("boom")

    handle = model.encoder.ln.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        camkit.create("legrad", model, "encoder.layers")(x, TARGETS)
    handle.remove()
    no_hooks_left(model)


def test_unsupported_models_are_layer_errors() -> None:
    with pytest.raises(LayerError, match="no attention block"):
        camkit.create("legrad", tiny_model(), "features")(tiny_inputs())
    with pytest.raises(LayerError, match="no attention block"):
        camkit.create("legrad", tv_vit(), "conv_proj")(tiny_inputs(size=32))

    class Wrapped(nn.Module):  # attention blocks, but no classifier head camkit knows
        def __init__(self) -> None:
            super().__init__()
            self.vit = tv_vit()

        def forward(self, x: Tensor) -> Tensor:
            return self.vit(x)

    model = Wrapped().eval()
    with pytest.raises(LayerError, match="VisionTransformer"):
        camkit.create("legrad", model, "vit.encoder.layers")(tiny_inputs(size=32))
    no_hooks_left(model)


def test_shapleycam_on_a_vit_token_layer() -> None:
    """The second-order pass on tokens, through fused attention (run on the math kernel):
    the same double backward written out here on the block's (B, N, D) output."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model, x, layer = tv_vit(), tiny_inputs(size=32), "encoder.layers.encoder_layer_1"
    ours = camkit.create("shapleycam", model, layer)(x, TARGETS).weights[layer]
    kept: list[Tensor] = []
    block = model.encoder.layers.encoder_layer_1
    handle = block.register_forward_hook(lambda _m, _i, out: kept.append(out))
    with sdpa_kernel(SDPBackend.MATH):
        out = model(x.clone().requires_grad_())
    handle.remove()
    (a,) = kept
    (g,) = torch.autograd.grad(out[[0, 1], TARGETS].sum(), a, create_graph=True)
    (hv,) = torch.autograd.grad((g[:, 1:] * a[:, 1:].detach()).sum(), a)
    expected = (g[:, 1:] - 0.5 * hv[:, 1:]).mean(1).detach()  # mean over the 16 patches
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)
    assert (hv[:, 1:].abs().max() > 1e-3 * g.abs().max()).item()


# -- against torchcam --------------------------------------------------------------------


def pearson(a: Tensor, b: Tensor) -> float:
    return float(np.corrcoef(a.double().flatten().numpy(), b.double().flatten().numpy())[0, 1])


@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_matches_torchcam(blocks: int) -> None:
    """torchcam averages the raw maps of the blocks it is given; camkit does the same for the
    blocks inside one layer (``blocks=``)."""
    methods = pytest.importorskip("torchcam.methods")
    model, x = tv_vit(), tiny_inputs(size=32)
    names = [f"encoder.layers.encoder_layer_{i}" for i in range(3)][-blocks:]
    with methods.LeGrad(model, names) as extractor:
        peer = extractor(TARGETS, model(x), normalized=False)[0].detach()
    no_hooks_left(model)
    ours = camkit.create("legrad", model, "encoder.layers", blocks=blocks)(x, TARGETS)
    mine = ours.layer_maps["encoder.layers"]
    assert pearson(mine, peer) >= 0.999
    torch.testing.assert_close(mine, peer, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_vit_b_16_stack_and_last_block() -> None:
    """torchvision's ViT-B/16 (random weights, 48 px: a 3 x 3 grid), the stack of its 12
    blocks against the hand run, and the last block alone equal to ``blocks=1``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.vit_b_16(weights=None, image_size=48).eval()
        nn.init.normal_(model.heads.head.weight, std=0.02)
    x = tiny_inputs(size=48)
    stack = camkit.create("legrad", model, "encoder.layers")(x, TARGETS)
    probs, outs, logits = tv_blocks(model, x)
    torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
    maps = []
    for p, z in zip(probs, outs):
        s = model.heads(model.encoder.ln(z.mean(1)))[torch.arange(2), TARGETS].sum()
        (g,) = torch.autograd.grad(s, p, retain_graph=True)
        maps.append(g.clamp_min(0).mean((1, 2))[:, 1:])
    expected = torch.stack(maps).mean(0).reshape(2, 3, 3).detach()
    torch.testing.assert_close(stack.layer_maps["encoder.layers"], expected, rtol=1e-4, atol=1e-8)
    last = "encoder.layers.encoder_layer_11"
    alone = camkit.create("legrad", model, last)(x, TARGETS).layer_maps[last]
    one = camkit.create("legrad", model, "encoder.layers", blocks=1)(x, TARGETS)
    torch.testing.assert_close(alone, one.layer_maps["encoder.layers"])


class _Block(nn.Module):
    """A pre-norm block whose attention is called with every argument positional."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim))

    def forward(self, t: Tensor) -> Tensor:
        x = self.ln(t)
        t = t + self.attn(x, x, x, None, False, None, True, False)[0]
        return t + self.mlp(t)


class _OtherTransformer(nn.Module):
    """No torchvision or timm ViT: three leading tokens, a max-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.lead = nn.Parameter(torch.randn(1, 3, 8))
        self.layers = nn.Sequential(_Block(), _Block())
        self.classifier = nn.Linear(8, 10)

    def project(self, t: Tensor) -> Tensor:
        return self.classifier(t.amax(1))

    def tokens(self, x: Tensor) -> Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat((self.lead.expand(len(t), -1, -1), t), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.layers(self.tokens(x)))


def test_score_projection_on_another_transformer() -> None:
    """``score_projection`` and ``grid`` (a 2x3 grid after 3 leading tokens) against the
    model run by hand, block by block."""
    model, x = _OtherTransformer().eval(), torch.randn(2, 3, 8, 12)
    t, maps = model.tokens(x), []
    for block in model.layers:
        probs, out = attend(block.ln(t), block.attn.in_proj_weight, block.attn.in_proj_bias, 2)
        t = t + block.attn.out_proj(out)
        t = t + block.mlp(t)
        score = model.project(t)[torch.arange(2), TARGETS].sum()
        (g,) = torch.autograd.grad(score, probs, retain_graph=True)
        maps.append(g.clamp_min(0).mean((1, 2))[:, 3:].reshape(2, 2, 3))
    expected = torch.stack(maps).mean(0)
    for prefix in (None, 3):
        cam = camkit.create(
            "legrad", model, "layers", grid=(2, 3), score_projection=model.project,
            prefix_tokens=prefix,
        )  # fmt: skip
        got = cam(x, TARGETS).layer_maps["layers"]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    no_hooks_left(model)


def test_score_projection_and_prefix_errors() -> None:
    model, x = _OtherTransformer().eval(), torch.randn(1, 3, 8, 12)
    with pytest.raises(LayerError, match="VisionTransformer"):
        camkit.create("legrad", model, "layers", grid=(2, 3))(x)
    with pytest.raises(LayerError, match="grid="):
        camkit.create("legrad", model, "layers", grid=(2, 3), prefix_tokens=1)(x)
    bad = camkit.create("legrad", model, "layers", grid=(2, 3), score_projection=lambda t: t)
    with pytest.raises(ConfigError, match="score_projection"):
        bad(x)
    no_hooks_left(model)
    schema = camkit.method_info("legrad").schema()["properties"]
    assert (
        schema["score_projection"]["type"] == "null" and schema["prefix_tokens"]["default"] is None
    )


def test_score_projection_equals_the_built_in_head() -> None:
    """A wrapped torchvision ViT (no head camkit knows) with the head as a projection gives
    the unwrapped model's map."""
    vit = tv_vit()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x: Tensor) -> Tensor:
            return self.vit(x)

    x = tiny_inputs(2, size=32)
    plain = camkit.create("legrad", vit, "encoder.layers")(x, TARGETS).layer_maps
    project = lambda t: vit.heads(vit.encoder.ln(t.mean(1)))  # noqa: E731
    wrapped = camkit.create(
        "legrad", Wrapped().eval(), "vit.encoder.layers", score_projection=project
    )
    got = wrapped(x, TARGETS).layer_maps["vit.encoder.layers"]
    torch.testing.assert_close(got, plain["encoder.layers"], rtol=1e-5, atol=1e-8)
