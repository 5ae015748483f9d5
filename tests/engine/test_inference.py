"""The bf16 mode's inference copy: batch norms folded into convolutions (checked in float32
against the model itself), bfloat16 weights, and every case where the model must be
forwarded as it is instead."""

from __future__ import annotations

import copy
import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

import camkit
from camkit.engine import accel
from camkit.engine.accel import capabilities, hardware, inference
from camkit.engine.accel.inference import inference_copy
from camkit.engine.accel.rewrites import ConvActivation, GlobalAvgPool, global_avg_pool
from camkit.engine.options import Setup
from camkit.engine.scoring import score_masks
from camkit.engine.services import Services


def needs(name: str) -> pytest.MarkDecorator:
    """Skip unless this CPU has capability ``name`` (as ``CAMKIT_CPU_CAPS`` spells it)."""
    caps = capabilities()
    return pytest.mark.skipif(
        not getattr(caps, hardware.NAMES[name]),
        reason=f"needs CPU capability {name!r}; this CPU: {caps.summary()}",
    )


def _randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine parameters, so no batch norm is the identity."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


class Residual(nn.Module):
    """Folding cases: a conv + BN pair, a conv whose output is also read by the skip path
    (not foldable), a conv without bias, a BN after a pooling (not foldable) and a linear.
    Activation cases: a function after a folded pair, a module in a Sequential (grouped
    conv, stride 2), an activation after a conv whose output is read twice (not fused)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.branch = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.branch_bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False),
            nn.BatchNorm2d(8),
            nn.Hardswish(),
        )
        self.pool_bn = nn.BatchNorm2d(8)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = self.branch(x)
        x = x + self.branch_bn(y) + torch.sigmoid(y)  # y is read twice: its BN stays
        x = self.pool_bn(self.block(x))
        pooled = self.gap(x) + F.adaptive_avg_pool2d(x, 1) + F.adaptive_avg_pool2d(x, 2).mean()
        return self.head(pooled.flatten(1))


class SharedConv(nn.Module):
    """One convolution called twice, each time followed by its own BN: neither is folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.bn2 = nn.BatchNorm2d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv(self.bn1(self.conv(x)))).mean((2, 3))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: Tensor) -> Tensor:
        f = self.bn(self.conv(x))
        if f.sum() > 0:  # Python branching on a tensor value: fx cannot trace it
            f = f * 2
        return f.mean((2, 3))


def _model(cls: type[nn.Module] = Residual) -> nn.Module:
    torch.manual_seed(0)
    return _randomize_batch_norms(cls()).eval()


def _batch_norms(module: nn.Module) -> list[str]:
    assert isinstance(module, fx.GraphModule)
    named = dict(module.named_modules())
    return [
        str(n.target)
        for n in module.graph.nodes
        if n.op == "call_module" and isinstance(named[str(n.target)], nn.BatchNorm2d)
    ]


def _fused(module: nn.Module) -> dict[str, str]:
    return {n: m.post_op for n, m in module.named_modules() if isinstance(m, ConvActivation)}


@needs("fused_fp32")
def test_folding_in_float32_computes_what_the_model_computes() -> None:
    model = _model()
    x = torch.randn(3, 3, 8, 8)
    folded = inference_copy(model, torch.float32)
    assert folded is not None
    # stem_bn and block's BN fold; branch_bn (its conv's output is read twice) and pool_bn
    # (not after a convolution) stay.
    assert _batch_norms(folded) == ["branch_bn", "pool_bn"]
    assert _fused(folded) == {"stem": "relu", "block.0": "hardswish"}
    # Global pools run as average pools over the whole map; a 2 x 2 adaptive pool stays.
    assert isinstance(folded.gap, GlobalAvgPool)
    functions = [n.target for n in folded.graph.nodes if n.op == "call_function"]
    assert functions.count(global_avg_pool) == 1
    assert functions.count(F.adaptive_avg_pool2d) == 1
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@needs("fused_fp32")
def test_clamping_activations_fuse_with_their_bounds() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU6(),
        nn.Conv2d(4, 4, 1),
        nn.Hardtanh(-0.2, 0.3),
        nn.Conv2d(4, 4, 1),
        nn.Hardtanh(-1.0, 1.0),
    )
    model = _randomize_batch_norms(model).eval()
    folded = inference_copy(model, torch.float32)
    assert folded is not None
    assert {
        n: (m.post_op, m.scalars)
        for n, m in folded.named_modules()
        if isinstance(m, ConvActivation)
    } == {
        "0": ("hardtanh", [0.0, 6.0]),
        "3": ("hardtanh", [-0.2, 0.3]),
        "5": ("hardtanh", [-1.0, 1.0]),
    }
    x = torch.randn(2, 3, 6, 6) * 4
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_without_the_fused_operator_activations_stay_separate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The companion of the two tests above, on any CPU: float32 fusion forced off.
    monkeypatch.setenv("CAMKIT_CPU_CAPS", "-fused_fp32")
    model = _model()
    folded = inference_copy(model, torch.float32)
    assert folded is not None and _fused(folded) == {}
    assert _batch_norms(folded) == ["branch_bn", "pool_bn"]
    assert isinstance(folded.gap, GlobalAvgPool)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@needs("fused_fp32")
def test_float32_fusion_does_not_depend_on_bfloat16_fusion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An AVX2-only CPU: oneDNN's bfloat16 convolution fails there, its float32 one works.
    monkeypatch.setenv("CAMKIT_CPU_CAPS", "-bf16,-fused_bf16")
    model = _model()
    folded = inference_copy(model, torch.float32)
    assert folded is not None
    assert _fused(folded) == {"stem": "relu", "block.0": "hardswish"}
    half = inference_copy(model, torch.bfloat16)
    assert half is not None and _fused(half) == {}


def test_a_reused_convolution_is_not_folded() -> None:
    model = _model(SharedConv)
    folded = inference_copy(model, torch.float32)
    assert folded is not None
    assert _batch_norms(folded) == ["bn1", "bn2"]
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "caps", [pytest.param("", marks=needs("fused_bf16"), id="fused"), "-fused_bf16"]
)
def test_bf16_copy_is_close_and_the_model_is_left_alone(
    caps: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAMKIT_CPU_CAPS", caps)
    model = _model()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    fast = inference_copy(model)
    assert fast is not None
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in fast.parameters())
    assert fast.stem.weight.is_contiguous(memory_format=torch.channels_last)
    fused = {"stem": "relu", "block.0": "hardswish"} if not caps else {}
    assert _fused(fast) == fused
    with torch.no_grad():
        exact = model(x)
        out = fast(x.to(torch.bfloat16)).float()
    torch.testing.assert_close(out, exact, rtol=0.05, atol=0.05 * float(exact.abs().max()))
    assert not torch.equal(out, exact)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert not any(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert isinstance(model.stem_bn, nn.BatchNorm2d)


def test_the_copy_is_kept_until_the_model_changes() -> None:
    model = _model()
    first = inference_copy(model)
    assert first is not None and inference_copy(model) is first
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.head.bias.add_(10.0)  # an in-place update, as an optimizer step makes
    second = inference_copy(model)
    assert second is not None and second is not first
    with torch.no_grad():
        torch.testing.assert_close(
            second(x.to(torch.bfloat16)).float(), model(x), rtol=0.05, atol=0.2
        )
    model.head = nn.Linear(8, 4).eval()  # a replaced module
    third = inference_copy(model)
    assert third is not None and third is not second
    assert inference_copy(model, torch.float32) is not third  # another dtype, another copy


def test_no_copy_when_it_could_differ_from_the_model() -> None:
    assert inference_copy(_model(Untraceable)) is None
    assert inference_copy(_model().train()) is None
    hooked = _model()
    handle = hooked.block[2].register_forward_hook(lambda m, i, o: o * 2)
    assert inference_copy(hooked) is None
    handle.remove()
    assert inference_copy(hooked) is not None
    pre = _model()
    pre.register_forward_pre_hook(lambda m, i: None)
    assert inference_copy(pre) is None
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert inference_copy(_model()) is None
    finally:
        handle.remove()
    assert inference_copy(nn.Sequential(nn.Flatten())) is None  # no parameters


def _gather(targets: Tensor):  # type: ignore[no-untyped-def]
    return lambda rows, index: rows.gather(1, targets[index].unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("cls", [Residual, Untraceable])
def test_scorer_bf16_uses_the_copy_or_autocast(
    cls: type[nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(cls)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    masks = torch.rand(2, 12, 4, 4, generator=gen)
    targets = torch.tensor([1, 2])
    seen: list[tuple[torch.dtype, bool, int]] = []

    def spy(model: nn.Module, dtype: torch.dtype) -> nn.Module | None:
        copied = inference_copy(model, dtype)
        if copied is None:
            return None

        def record(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
            (z,) = args
            seen.append((z.dtype, z.is_contiguous(memory_format=torch.channels_last), len(z)))

        wrapper = nn.Sequential(copied)
        wrapper.register_forward_pre_hook(record)
        return wrapper

    monkeypatch.setattr(accel, "inference_copy", spy)
    exact_setup = Setup.of(model, camkit.RunOptions(batch_size=5))
    fast_setup = Setup.of(model, camkit.RunOptions(batch_size=5, precision="bf16"))
    exact = score_masks(Services.standalone(exact_setup, x, _gather(targets)), masks)
    with warnings.catch_warnings():  # where bfloat16 is emulated (see test_hardware.py)
        warnings.simplefilter("ignore", camkit.errors.PerformanceWarning)
        fast = score_masks(Services.standalone(fast_setup, x, _gather(targets)), masks)
    assert fast.dtype == torch.float32
    spread = float(exact.max() - exact.min())
    torch.testing.assert_close(fast, exact, rtol=0, atol=0.05 * spread)
    assert not torch.equal(fast, exact)
    if cls is Untraceable:
        assert seen == []  # forwarded under autocast
    else:
        # All 24 masked inputs went through the copy, in bfloat16 and channels-last.
        assert seen == [(torch.bfloat16, True, 5)] * 4 + [(torch.bfloat16, True, 4)]


@pytest.mark.filterwarnings("ignore::camkit.errors.PerformanceWarning")
def test_scorecam_bf16_map_matches_exact_mode() -> None:
    model = _model()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    exact = camkit.create("scorecam", model, "branch", progress=False)(x).maps
    fast = camkit.create("scorecam", model, "branch", progress=False, precision="bf16")(x).maps
    r = torch.corrcoef(torch.stack([exact.flatten(), fast.flatten()]))[0, 1]
    assert float(r) > 0.99


def test_a_model_with_inference_tensors_gets_a_fresh_copy_each_time() -> None:
    with torch.inference_mode():
        model = _model()  # parameters created in inference mode keep no version counter
    first = inference_copy(model)
    assert first is not None and inference_copy(model) is not first


def test_the_copy_is_freed_with_the_model() -> None:
    model = _model()
    copied = inference_copy(model)
    assert copied is not None
    gone = weakref.ref(copied)
    del model, copied
    gc.collect()  # traced modules hold reference cycles
    assert gone() is None


def test_an_unchanged_model_is_not_fingerprinted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    first = inference_copy(model)
    walks: list[int] = []
    fingerprint = inference._fingerprint

    def counting(*args):  # type: ignore[no-untyped-def]
        walks.append(1)
        return fingerprint(*args)

    monkeypatch.setattr(inference, "_fingerprint", counting)
    inference_copy(model)  # the build itself assigned modules: one full check
    walks.clear()
    for _ in range(3):
        assert inference_copy(model) is first
    assert walks == []
    model.head.weight = nn.Parameter(torch.zeros(4, 8))  # an assignment: checked in full
    second = inference_copy(model)
    assert walks and second is not first
    with torch.no_grad():
        torch.testing.assert_close(
            second(torch.ones(1, 3, 8, 8).bfloat16()).float(),
            model.head.bias[None].expand(1, 4),
            rtol=0.01,
            atol=0.01,
        )
    model.double()  # assigns .data, which no hook sees: the storage check does
    third = inference_copy(model, torch.float32)
    assert third is not None
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(third(x.float()).double(), model(x), rtol=1e-4, atol=1e-4)


def test_without_torch_hook_tables_no_copy_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hook tables are private: where a torch build keeps them elsewhere, camkit cannot
    # tell whether a model is hooked, and forwards it as it is.
    monkeypatch.delattr(nn.modules.module, "_global_forward_hooks")
    assert inference_copy(_model()) is None
