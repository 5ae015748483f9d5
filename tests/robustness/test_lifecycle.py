"""What long-lived use does to camkit: many calls, exceptions, shared models, threads."""

from __future__ import annotations

import copy
import gc
import os
import threading
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit.engine.layers import locate
from camkit.errors import LayerError

from .models import TinyCNN
from .reference import MaskedScores, hooks_on


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    # issubclass(type(o)): isinstance would read __class__, which some lazy modules warn on.
    return sum(issubclass(type(o), Tensor) for o in gc.get_objects())


def _tiny() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


# -- memory ----------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_a_thousand_calls_do_not_grow_memory() -> None:
    # Python-level retention shows in the tensor count. Keeping only each call's result
    # (maps and layer maps at 32 px) grows RSS by ~13 MiB over 1,000 calls; a leaked graph
    # holds more. Measured growth without leaks is well under 1 MiB.
    model, x = _tiny(), torch.randn(2, 3, 32, 32)
    cam = camkit.create("gradcam", model, "features")
    for _ in range(50):
        cam(x)
    gc.collect()
    rss, tensors = _rss_bytes(), _live_tensors()
    for _ in range(1000):
        res = cam(x)
    del res
    gc.collect()
    assert _rss_bytes() - rss < 8 * 2**20
    assert _live_tensors() - tensors <= 0
    assert hooks_on(model) == []


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_repeated_scoring_does_not_grow_memory() -> None:
    model, x = _tiny(), torch.randn(2, 3, 32, 32)
    cam = camkit.Extractor(MaskedScores(MaskedScores.Config(batch_size=4)), model, "features")
    for _ in range(20):
        cam(x)
    gc.collect()
    rss, tensors = _rss_bytes(), _live_tensors()
    for _ in range(100):
        cam(x)
    gc.collect()
    assert _rss_bytes() - rss < 8 * 2**20
    assert _live_tensors() - tensors <= 0


# -- hooks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", camkit.list_methods())
def test_no_hook_is_left_after_a_call(method: str) -> None:
    model = _tiny()
    fields = camkit.method_info(method).config.model_fields
    config = {k: v for k, v in {"num_samples": 2, "seed": 0}.items() if k in fields}
    if camkit.method_info(method).cls.needs_attention:  # a ViT-only method refuses a CNN
        with pytest.raises(LayerError, match="attention"):
            camkit.create(method, model, ["features.2", "features"])(torch.randn(2, 3, 8, 8))
        assert hooks_on(model) == []
        return
    camkit.create(method, model, ["features.2", "features"], **config)(torch.randn(2, 3, 8, 8))
    camkit.create(method, model, **config)(torch.randn(1, 3, 8, 8))
    assert hooks_on(model) == []


class Failing(Exception):
    """The model's own error, which camkit must let through unchanged."""


class FailsAfterFeatures(nn.Module):
    """TinyCNN whose forward raises after the hooked layers ran, from call ``fail_at`` on."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.inner = _tiny()
        self.calls = 0
        self.fail_at = fail_at

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        features = self.inner.features(x)
        if self.calls >= self.fail_at:
            raise Failing(f"call {self.calls}")
        return self.inner.fc(features.mean((2, 3)))


def _gradients_at(model: nn.Module) -> Callable[[Tensor], object]:
    """An extractor whose method calls the model again through ctx.gradients_at."""

    class NoisyGrad(camkit.Method):
        name = "noisy-grad"
        needs_gradients = True

        def weights(self, ctx: camkit.Context) -> Tensor:
            return ctx.gradients_at(ctx.inputs + 0.1).mean((2, 3))

    return camkit.Extractor(NoisyGrad(), model, "inner.features")


@pytest.mark.parametrize(
    ("make", "fail_at"),
    [
        (lambda m: camkit.create("gradcam", m, "inner.features"), 1),  # the gradient forward
        (lambda m: camkit.create("cam", m, "inner.features", fc_layer="inner.fc"), 1),
        (lambda m: camkit.create("gradcam", m), 1),  # auto-location's forward
        (lambda m: camkit.create("gradcam", m), 2),  # the forward after locating
        (_gradients_at, 2),  # a forward of ctx.gradients_at
        # a forward of the scoring service
        (lambda m: camkit.Extractor(MaskedScores(), m, "inner.features.2"), 2),
    ],
)
def test_no_hook_is_left_when_the_model_raises(
    make: Callable[[nn.Module], Callable[[Tensor], object]], fail_at: int
) -> None:
    model = FailsAfterFeatures(fail_at).eval()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    extractor = make(model)
    with pytest.raises(Failing, match=f"call {fail_at}"):
        extractor(torch.randn(2, 3, 8, 8))
    assert hooks_on(model) == []
    assert not model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_no_hook_is_left_when_a_layer_output_is_unusable() -> None:
    class ReturnsNone(nn.Module):
        def forward(self, x: Tensor) -> None:
            return None

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.odd = ReturnsNone()
            self.body = _tiny()

        def forward(self, x: Tensor) -> Tensor:
            self.odd(x)
            return self.body(x)

    model = Model()
    with pytest.raises(camkit.errors.LayerError, match="returned NoneType"):
        camkit.create("gradcam", model, "odd")(torch.randn(1, 3, 8, 8))
    assert hooks_on(model) == []


# -- sharing a model -------------------------------------------------------------------------


def test_two_extractors_on_one_model_in_turn_match_each_alone() -> None:
    model = _tiny()
    xs = [torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    # Alone: each extractor on its own copy of the model.
    alone_grad = camkit.create("gradcam", copy.deepcopy(model), "features.0")
    alone_cam = camkit.create("cam", copy.deepcopy(model), "features")
    grad = camkit.create("gradcam", model, "features.0")
    cam = camkit.create("cam", model, "features")
    for x in xs:
        assert torch.equal(grad(x).maps, alone_grad(x).maps)
        assert torch.equal(cam(x).maps, alone_cam(x).maps)
    assert hooks_on(model) == []


def test_an_extractor_inside_another_models_forward() -> None:
    # A wrapper that explains its backbone inside its own forward, while an outer extractor
    # explains the wrapper: each sees only its own hooks.
    inner_model = _tiny()
    inner = camkit.create("gradcam", inner_model, "features")

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = inner_model
            self.seen: list[Tensor] = []

        def forward(self, x: Tensor) -> Tensor:
            self.seen.append(inner(x.detach()).maps)
            return self.backbone(x)

    x = torch.randn(2, 3, 16, 16)
    expected = inner(x).maps
    outer = camkit.create("gradcam", Wrapper(), "backbone.features.0")
    res = outer(x)
    assert torch.equal(outer.model.seen[-1], expected)
    torch.testing.assert_close(
        res.maps, camkit.create("gradcam", inner_model, "features.0")(x).maps
    )
    assert hooks_on(inner_model) == []


def _run_in_threads(
    fn: Callable[[Tensor], Tensor], inputs: list[Tensor], threads: int = 2
) -> list[list[Tensor]]:
    """Each thread calls ``fn`` on every input, all threads released at once."""
    barrier = threading.Barrier(threads)
    results: list[list[Tensor]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            barrier.wait()
            for x in inputs:
                results[slot].append(fn(x))
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("method", ["gradcam", "cam", "masked-scores"])
def test_one_extractor_from_two_threads_matches_sequential_calls(method: str) -> None:
    model = _tiny()

    def make() -> Callable[[Tensor], camkit.CAMResult]:
        if method == "masked-scores":
            return camkit.Extractor(MaskedScores(MaskedScores.Config(batch_size=4)), model)
        # Grad-CAM's layer is auto-located, so the first calls locate it from both threads.
        return camkit.create(method, model, None if method == "gradcam" else "features")

    inputs = [
        torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(8)
    ]
    alone = make()
    sequential = [alone(x).maps for x in inputs]
    shared = make()
    for per_thread in _run_in_threads(lambda x: shared(x).maps, inputs):
        for got, want in zip(per_thread, sequential):
            assert torch.equal(got, want)
    assert hooks_on(model) == []


def test_auto_location_ignores_other_threads_forwards() -> None:
    # While one thread locates the layer, another runs the model and stops early: the
    # located layer must come from the locating thread's own forward only.
    model = _tiny()
    locating_done_forward = threading.Event()
    other_ran = threading.Event()
    locating_thread: list[int] = []

    class Gate(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            if threading.get_ident() in locating_thread:
                locating_done_forward.set()
                assert other_ran.wait(5)
            return x

    model.fc = nn.Sequential(Gate(), model.fc)

    def other() -> None:
        assert locating_done_forward.wait(5)
        model.features[0](torch.randn(1, 3, 8, 8))  # a partial forward: only an early layer
        other_ran.set()

    thread = threading.Thread(target=other)
    thread.start()
    locating_thread.append(threading.get_ident())
    try:
        name, _ = locate(model, torch.randn(1, 3, 8, 8))
    finally:
        thread.join()
    assert name == "features"
    assert hooks_on(model) == []
