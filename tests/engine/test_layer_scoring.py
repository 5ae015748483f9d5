"""The layer-masked scoring pass against direct loops that mask the layer by hand."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.layer_scoring import score_layer
from camkit.engine.options import Setup
from camkit.engine.services import Services
from camkit.errors import LayerError, PluginError
from camkit.testing import no_hooks_left, tiny_inputs, tiny_model

TARGETS = torch.tensor([1, 3])


def target_score(rows: Tensor, index: Tensor | None) -> Tensor:
    assert index is not None
    return rows.gather(1, TARGETS[index].unsqueeze(1)).squeeze(1)


def tiny_head(model: nn.Module, feats: Tensor) -> Tensor:
    return model.fc(model.pool(feats).flatten(1))


def scorer(model: nn.Module, x: Tensor, name: str, **kw) -> Callable[[Tensor], Tensor]:
    """The layer-masked scoring pass of standalone services, as a function of the masks."""
    score, layout = kw.pop("score", target_score), kw.pop("layout", "nchw")
    setup = Setup.of(model, camkit.RunOptions.model_validate(kw), layout=layout)
    door = Services.standalone(setup, x, score)
    door.layers[name] = model.get_submodule(name)
    return lambda masks: score_layer(door, name, masks)


@pytest.fixture
def model() -> nn.Module:
    return tiny_model(seed=3, channels=6)


@pytest.fixture
def x() -> Tensor:
    return tiny_inputs(2, 12, seed=4)


def seeded(cls: type[nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls().eval()


def direct_tiny(model: nn.Module, x: Tensor, masks: Tensor) -> Tensor:
    """Target scores with the features multiplied by each mask, one forward per (image, mask)."""
    out = torch.empty(masks.shape[:2])
    with torch.no_grad():
        for b in range(masks.shape[0]):
            feats = model.features(x[b : b + 1])
            for m in range(masks.shape[1]):
                scores = tiny_head(model, feats * masks[b, m][None, :, None, None])
                out[b, m] = scores[0, TARGETS[b]]
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_scores_match_a_direct_loop(model, x, batch_size):
    masks = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(0))
    got = scorer(model, x, "features", batch_size=batch_size)(masks)
    torch.testing.assert_close(got, direct_tiny(model, x, masks), rtol=1e-5, atol=1e-6)
    no_hooks_left(model)


def test_broadcast_ablation_masks(model, x):
    keep = (1 - torch.eye(6)).expand(2, 6, 6)
    got = scorer(model, x, "features", batch_size=4)(keep)
    torch.testing.assert_close(got, direct_tiny(model, x, keep.contiguous()), rtol=1e-5, atol=1e-6)


def test_all_ones_masks_give_the_clean_scores(model, x):
    got = scorer(model, x, "features")(torch.ones(2, 3, 6))
    with torch.no_grad():
        clean = target_score(model(x), torch.arange(2))
    torch.testing.assert_close(got, clean[:, None].expand(2, 3), rtol=1e-6, atol=1e-6)


class Counting(nn.Module):
    """Wraps a model, recording how often and in which grad mode it is called."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], torch.is_inference_mode_enabled()))
        return self.inner(x)


def test_chunks_of_batch_size_under_inference_mode(model, x):
    wrapped = Counting(model)
    scorer(wrapped, x, "inner.features", batch_size=4)(torch.ones(2, 5, 6))
    assert [n for n, _ in wrapped.calls] == [4, 4, 2]
    assert all(mode for _, mode in wrapped.calls)


def test_bad_mask_shapes_are_rejected(model, x):
    s = scorer(model, x, "features")
    for bad in (torch.ones(2, 6), torch.ones(3, 2, 6), torch.ones(2, 2, 5)):
        with pytest.raises(PluginError, match=r"\(B=2, M, C(=6)?\)"):
            s(bad)


def test_hook_removed_when_scoring_raises(model, x):
    def failing(rows: Tensor, index: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        scorer(model, x, "features", score=failing)(torch.ones(2, 1, 6))
    no_hooks_left(model)


def test_a_layer_that_never_runs(model, x):
    model.unused = nn.Conv2d(6, 6, 1)
    with pytest.raises(LayerError, match="did not run"):
        scorer(model, x, "unused")(torch.ones(2, 1, 6))
    no_hooks_left(model)


def test_other_threads_are_not_masked(model, x):
    with torch.no_grad():
        clean = model(x)
    seen: list[Tensor] = []

    def score_and_probe(rows: Tensor, index: Tensor) -> Tensor:
        # While the hook is attached, a forward from another thread must see the clean layer.
        thread = threading.Thread(target=lambda: seen.append(model(x)))
        thread.start()
        thread.join()
        return target_score(rows, index)

    got = scorer(model, x, "features", score=score_and_probe)(torch.zeros(2, 1, 6))
    assert seen
    for out in seen:
        torch.testing.assert_close(out, clean)
    # Zeroing every channel leaves only the head's bias.
    torch.testing.assert_close(got[:, 0], model.fc.bias[TARGETS].detach())


class ChannelsLast(nn.Module):
    """A conv whose features are handed on as (B, h, w, C), as Swin-style models do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2)
        self.nhwc = nn.Identity()
        self.fc = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.nhwc(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(feats.mean((1, 2)))


def test_channels_last_output_masked_on_its_channel_axis(x):
    model = seeded(ChannelsLast)
    masks = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(1))
    got = scorer(model, x, "nhwc", layout="nhwc", batch_size=2)(masks)
    expected = torch.empty(2, 3)
    with torch.no_grad():
        for b in range(2):
            feats = model.conv(x[b : b + 1]).permute(0, 2, 3, 1)
            for m in range(3):
                out = model.fc((feats * masks[b, m]).mean((1, 2)))
                expected[b, m] = out[0, TARGETS[b]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class Tokens(nn.Module):
    """Patch tokens after a class token; the head reads both, so masking the class token
    would show."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 4))
        self.blocks = nn.Linear(4, 4)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.blocks(torch.cat([self.cls.expand(x.shape[0], -1, -1), patches], 1))
        return self.fc(torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1))


def test_tokens_masked_on_the_grid_only(x):
    model = seeded(Tokens)
    masks = torch.rand(2, 2, 4, generator=torch.Generator().manual_seed(2))
    got = scorer(model, x, "blocks", layout="tokens", batch_size=3)(masks)
    expected = torch.empty(2, 2)
    with torch.no_grad():
        for b in range(2):
            xb = x[b : b + 1]
            patches = model.embed(xb).flatten(2).transpose(1, 2)
            tokens = model.blocks(torch.cat([model.cls, patches], 1))
            for m in range(2):
                grid = tokens[:, 1:] * masks[b, m]
                out = model.fc(torch.cat([tokens[:, 0], grid.mean(1)], 1))
                expected[b, m] = out[0, TARGETS[b]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class TupleLayer(nn.Module):
    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.conv(x)
        return out, out.detach().clone()


class TupleModel(nn.Module):
    """A layer returning (features, a copy): only the first is masked."""

    def __init__(self) -> None:
        super().__init__()
        self.block = TupleLayer(nn.Conv2d(3, 3, 3))
        self.fc = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.block(x)
        return self.fc(torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1))


def test_tuple_output_first_tensor_masked(x):
    model = seeded(TupleModel)
    masks = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(3))
    got = scorer(model, x, "block")(masks)
    expected = torch.empty(2, 2)
    with torch.no_grad():
        for b in range(2):
            a = model.block.conv(x[b : b + 1])
            for m in range(2):
                pooled = torch.cat(
                    [(a * masks[b, m][None, :, None, None]).mean((2, 3)), a.mean((2, 3))], 1
                )
                expected[b, m] = model.fc(pooled)[0, TARGETS[b]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


class AblationConfig(camkit.MethodConfig):
    batch_size: int = camkit.Field(32, gt=0)


class LayerDrop(camkit.Method):
    """Test method: weights are the raw score drops of ablating each channel."""

    name = "test-layer-drop"
    summary = "test"
    Config = AblationConfig
    relu = False

    def weights(self, ctx: camkit.Context) -> Tensor:
        c = ctx.activations.shape[1]
        keep = (1 - torch.eye(c)).expand(ctx.activations.shape[0], c, c)
        return ctx.baseline_scores[:, None] - ctx.score_layer(keep)


class Plugin:
    @camkit.hookimpl
    def camkit_methods(self):
        return [LayerDrop]


@pytest.fixture
def layer_drop():
    camkit.register_plugin(Plugin(), "test-layer-drop")
    try:
        yield
    finally:
        camkit.unregister_plugin("test-layer-drop")


def test_context_score_layer_through_an_extractor(layer_drop, model, x):
    wrapped = Counting(model)
    res = camkit.create("test-layer-drop", wrapped, "inner.features", batch_size=5)(x, TARGETS)
    keep = (1 - torch.eye(6)).expand(2, 6, 6).contiguous()
    with torch.no_grad():
        clean = target_score(model(x), torch.arange(2))
    expected = clean[:, None] - direct_tiny(model, x, keep)
    torch.testing.assert_close(res.weights["inner.features"], expected, rtol=1e-4, atol=1e-5)
    # One clean forward, then 12 ablated rows in chunks of the method's batch_size.
    assert [n for n, _ in wrapped.calls] == [2, 5, 5, 2]
    no_hooks_left(model)
