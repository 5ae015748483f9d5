"""The masked scoring pass against a naive loop: each mask upsampled, multiplied into its
image and forwarded alone, in NCHW layout and fp32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import camkit
from camkit.engine.options import Setup
from camkit.engine.scoring import score_masks
from camkit.engine.services import Services
from camkit.errors import PluginError

SIZE = 16


class Net(nn.Module):
    """A small conv net with BatchNorm; ``flatten_with_view`` makes it reject channels-last
    inputs, as models that call ``.view`` on their features do."""

    def __init__(self, flatten_with_view: bool = False, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(8 * (SIZE // 2) ** 2, classes)
        self.flatten_with_view = flatten_with_view

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        return self.head(f.view(f.shape[0], -1) if self.flatten_with_view else f.flatten(1))


class Recorder(nn.Module):
    """Wraps a model and records what each forward pass was given.

    Its forward branches on the input (``and`` on tensor properties), so it does not trace:
    ``precision="bf16"`` forwards it under autocast rather than through an inference copy
    (which tests/engine/test_inference.py covers)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[dict[str, object]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(
            {
                "rows": x.shape[0],
                "ptr": x.data_ptr(),
                "channels_last": x.is_contiguous(memory_format=torch.channels_last)
                and not x.is_contiguous(),
                "inference": torch.is_inference_mode_enabled(),
                "autocast": torch.is_autocast_enabled("cpu"),
            }
        )
        return self.inner(x)


def make_model(seed: int = 0, **kwargs: bool) -> nn.Module:
    torch.manual_seed(seed)
    model = Net(**kwargs).eval()
    # Non-trivial running statistics, so BatchNorm is not the identity.
    model.features[1].running_mean.uniform_(-0.5, 0.5)
    model.features[1].running_var.uniform_(0.5, 2.0)
    return model


def target_score(targets: Tensor) -> Callable[[Tensor, Tensor | None], Tensor]:
    def score(rows: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        return rows.gather(1, targets[index].unsqueeze(1)).squeeze(1)

    return score


class Scorer:
    """The masked scoring pass of standalone services on ``x``, called like a function."""

    def __init__(
        self, model: nn.Module, x: Tensor, score: Callable[..., Tensor], **options: object
    ) -> None:
        setup = Setup.of(model, camkit.RunOptions.model_validate(options))
        self.door = Services.standalone(setup, x, score)

    def __call__(self, masks: Tensor, **kwargs: object) -> Tensor:
        return score_masks(self.door, masks, **kwargs)  # type: ignore[arg-type]


def naive_scores(
    model: nn.Module,
    x: Tensor,
    masks: Tensor,
    targets: Tensor,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One forward per mask: upsample, add noise (one draw per mask, in mask order),
    multiply into the image, score."""
    batch, count = masks.shape[:2]
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    out = torch.empty(batch, count)
    with torch.no_grad():
        for b in range(batch):
            for k in range(count):
                up = F.interpolate(
                    masks[b, k][None, None], size=x.shape[2:], mode=mode, align_corners=False
                )[0, 0]
                if noise_std > 0:
                    up = up + noise_std * torch.randn(up.shape, generator=generator)
                out[b, k] = model((up * x[b])[None])[0, targets[b]]
    return out


@pytest.fixture
def data() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
    masks = torch.rand(2, 7, 4, 4, generator=gen)
    targets = torch.tensor([1, 3])
    return x, masks, targets


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_matches_naive_loop(data: tuple[Tensor, Tensor, Tensor], batch_size: int) -> None:
    x, masks, targets = data
    model = Recorder(make_model())
    scores = Scorer(model, x, target_score(targets), batch_size=batch_size)(masks)
    expected = naive_scores(model.inner, x, masks, targets)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores.dtype == torch.float32
    # Memory is bounded by batch_size inputs: no forward is given more.
    assert max(c["rows"] for c in model.calls) == min(batch_size, 14)
    assert sum(c["rows"] for c in model.calls) == 14


def test_identical_masks_are_forwarded_once(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, masks, targets = data
    masks = masks.clone()
    masks[0, 2] = 0  # constant channels: their normalized masks are all zeros
    masks[0, 5] = 0
    masks[0, 6] = masks[0, 1]
    masks[1, 0] = masks[1, 4]
    model = Recorder(make_model())
    scores = Scorer(model, x, target_score(targets), batch_size=4)(masks)
    torch.testing.assert_close(
        scores, naive_scores(model.inner, x, masks, targets), rtol=1e-5, atol=1e-5
    )
    assert sum(c["rows"] for c in model.calls) == (7 - 2) + (7 - 1)
    # Identical masks of different images are different inputs, so both are forwarded.
    model.calls.clear()
    same = masks[:1].expand(2, -1, -1, -1)
    Scorer(model, x, target_score(targets), batch_size=4)(same)
    assert sum(c["rows"] for c in model.calls) == 2 * 5


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_noise_is_seeded_one_draw_per_mask(
    data: tuple[Tensor, Tensor, Tensor], batch_size: int
) -> None:
    x, masks, targets = data
    model = make_model()
    scorer = Scorer(model, x, target_score(targets), batch_size=batch_size)
    scores = scorer(masks, noise_std=0.3, generator=torch.Generator().manual_seed(7))
    expected = naive_scores(
        model, x, masks, targets, noise_std=0.3, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    other = scorer(masks, noise_std=0.3, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(scores, other, atol=1e-3)


def test_noise_forwards_every_mask(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, masks, targets = data
    masks = torch.zeros_like(masks)  # all identical, but each gets its own noise
    model = Recorder(make_model())
    Scorer(model, x, target_score(targets), batch_size=5)(
        masks, noise_std=0.1, generator=torch.Generator().manual_seed(0)
    )
    assert sum(c["rows"] for c in model.calls) == 14


def test_masks_at_input_size_and_videos() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, SIZE, SIZE, generator=gen)
    masks = torch.rand(1, 3, SIZE, SIZE, generator=gen)
    targets = torch.tensor([2])
    model = make_model()
    torch.testing.assert_close(
        Scorer(model, x, target_score(targets), batch_size=2)(masks),
        naive_scores(model, x, masks, targets),
        rtol=1e-5,
        atol=1e-5,
    )
    torch.manual_seed(1)
    video_model = nn.Sequential(
        nn.Conv3d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()
    clip = torch.randn(2, 3, 4, 8, 8, generator=gen)
    clip_masks = torch.rand(2, 3, 2, 4, 4, generator=gen)
    clip_targets = torch.tensor([0, 2])
    torch.testing.assert_close(
        Scorer(video_model, clip, target_score(clip_targets), batch_size=4)(clip_masks),
        naive_scores(video_model, clip, clip_masks, clip_targets),
        rtol=1e-5,
        atol=1e-5,
    )


def test_channels_last_inputs_for_conv_models(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, masks, targets = data
    model = Recorder(make_model())
    Scorer(model, x, target_score(targets), batch_size=4)(masks)
    assert all(c["channels_last"] for c in model.calls)
    model.calls.clear()
    Scorer(model, x, target_score(targets), batch_size=4, channels_last=False)(masks)
    assert not any(c["channels_last"] for c in model.calls)


def test_model_that_rejects_channels_last_gets_contiguous_inputs(
    data: tuple[Tensor, Tensor, Tensor],
) -> None:
    x, masks, targets = data
    model = Recorder(make_model(flatten_with_view=True))
    with pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))
    model.calls.clear()
    scores = Scorer(model, x, target_score(targets), batch_size=4)(masks)
    torch.testing.assert_close(
        scores, naive_scores(model.inner, x, masks, targets), rtol=1e-5, atol=1e-5
    )
    assert [c["channels_last"] for c in model.calls] == [True] + [False] * 4


def test_one_input_buffer_for_all_chunks(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, masks, targets = data
    model = Recorder(make_model())
    Scorer(model, x, target_score(targets), batch_size=3)(masks)
    assert len(model.calls) == 5
    assert len({c["ptr"] for c in model.calls}) == 1


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runs_in_inference_mode_and_leaves_the_model_alone(
    data: tuple[Tensor, Tensor, Tensor], precision: Literal["fp32", "bf16"]
) -> None:
    x, masks, targets = data
    model = Recorder(make_model())
    before = {n: (p.clone(), p.stride(), p.requires_grad) for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    Scorer(model, x, target_score(targets), batch_size=4, precision=precision)(masks)
    assert all(c["inference"] for c in model.calls)
    assert all(c["autocast"] == (precision == "bf16") for c in model.calls)
    assert not torch.is_autocast_enabled("cpu")
    for name, p in model.named_parameters():
        value, stride, requires_grad = before[name]
        assert torch.equal(p, value) and p.stride() == stride and p.dtype == torch.float32
        assert p.requires_grad == requires_grad and p.grad is None
    assert [m.training for m in model.modules()] == modes


def test_bf16_is_close_to_fp32(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, _, targets = data
    masks = torch.rand(2, 40, 4, 4, generator=torch.Generator().manual_seed(9))
    model = make_model()
    exact = Scorer(model, x, target_score(targets), batch_size=16)(masks)
    fast = Scorer(model, x, target_score(targets), batch_size=16, precision="bf16")(masks)
    assert fast.dtype == torch.float32
    spread = float(exact.max() - exact.min())
    torch.testing.assert_close(fast, exact, rtol=0, atol=0.05 * spread)
    assert float(torch.corrcoef(torch.stack([fast.flatten(), exact.flatten()]))[0, 1]) > 0.99
    assert not torch.equal(fast, exact)  # bf16 really ran in reduced precision


def test_rejects_bad_masks(data: tuple[Tensor, Tensor, Tensor]) -> None:
    x, masks, targets = data
    model = make_model()
    with pytest.raises(PluginError, match=r"\(B=2, M, \*spatial\)"):
        Scorer(model, x, target_score(targets))(masks[0])
    empty = Scorer(model, x, target_score(targets))(masks[:, :0])
    assert empty.shape == (2, 0)


class _ScoreMethod(camkit.Method):
    """Weights are the raw masked scores: enough to see what the engine's scorer did."""

    name = "test-scoring-precision"
    many_forwards = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.score(camkit.minmax_normalize(ctx.activations))


class _Plugin:
    @camkit.hookimpl
    def camkit_methods(self) -> list[type[camkit.Method]]:
        return [_ScoreMethod]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_extractor_passes_the_run_options_precision(
    data: tuple[Tensor, Tensor, Tensor], precision: str
) -> None:
    x, _, _ = data
    model = Recorder(make_model())
    camkit.register_plugin(_Plugin(), "test-scoring-plugin")
    try:
        result = camkit.create(
            "test-scoring-precision", model, "inner.features", precision=precision, batch_size=4
        )(x)
    finally:
        camkit.unregister_plugin("test-scoring-plugin")
    clean, *scoring = model.calls
    assert not clean["autocast"]
    assert all(c["autocast"] == (precision == "bf16") for c in scoring)
    assert all(w.dtype == torch.float32 for w in result.weights.values())
    assert result.maps.dtype == torch.float32
