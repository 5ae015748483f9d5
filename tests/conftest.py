"""Shared fixtures: tiny models, small inputs, independent reference CAMs, clean state.

The reference implementations here are deliberately naive: their own forward hook, their own
``torch.autograd.grad`` call and per-sample Python loops, written from the formulas and sharing
no code with camkit, so comparing against them tests camkit rather than restating it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from camkit import registry as registry_module
from camkit.engine.accel import layout
from camkit.registry import registry

ScoreFn = Callable[[Tensor], Tensor]


class TinyNet(nn.Module):
    """conv-bn-relu-conv-relu, global average pooling, one ``nn.Linear`` head: the CAM shape.

    ``features.0`` outputs ``(B, 4, H, W)``, ``features.3`` and ``features`` ``(B, 6, H/2, W/2)``;
    the ReLUs are in place, as in torchvision, so they overwrite the tensors the convs return.
    """

    def __init__(self, num_classes: int = 5, inplace: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 6, 3, padding=1, stride=2),
            nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def hooks_on(model: nn.Module) -> list[str]:
    """Every forward/backward hook left on ``model``'s modules, plus torch's global ones."""
    found = []
    for name, module in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            if getattr(module, attr):
                found.append(f"{name or '<model>'}.{attr}")
    for attr in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if getattr(torch_module, attr):
            found.append(attr)
    return found


@pytest.fixture
def no_hooks() -> Iterator[Callable[[nn.Module], None]]:
    """``no_hooks(model)`` asserts now, and again at teardown, that no hooks remain."""
    watched: list[nn.Module] = []

    def check(model: nn.Module) -> None:
        watched.append(model)
        assert hooks_on(model) == []

    yield check
    for model in watched:
        assert hooks_on(model) == []


@pytest.fixture
def tiny() -> Iterator[TinyNet]:
    """A seeded :class:`TinyNet` in eval mode; asserts at teardown that no hooks remain."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    yield model
    assert hooks_on(model) == []


@pytest.fixture
def x32() -> Tensor:
    """``(2, 3, 32, 32)`` seeded random images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def x64() -> Tensor:
    """``(2, 3, 64, 64)`` seeded random images."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))


@pytest.fixture
def resnet18() -> nn.Module:
    """torchvision's resnet18, random weights, eval mode."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture
def vgg11() -> nn.Module:
    """torchvision's vgg11 with its real ``features`` and a small classifier head.

    The stock classifier holds 120M parameters whose initialization alone takes seconds, so the
    model is built on the meta device and only ``features`` is materialized, then initialized
    as torchvision initializes it.
    """
    from torchvision.models import vgg11

    with torch.device("meta"):
        model = vgg11(weights=None)
    torch.manual_seed(0)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    model.classifier = nn.Linear(512 * 7 * 7, 10)
    return model.eval()


@pytest.fixture(autouse=True)
def layout_by_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The explained forward's layout follows the accelerator's rule, unmeasured, so that
    forward counts and layouts are exact (tests/engine/test_layout.py measures)."""
    monkeypatch.setattr(layout, "MEASURE", False)


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Every test starts from, and leaves behind, a registry rebuilt from the environment.

    Reloading is lazy, so the rebuild happens after ``monkeypatch`` has restored the
    environment and ``importlib.metadata``.
    """
    registry.reload()
    yield
    registry.reload()


class FakeEntryPoint:
    """Stands in for an ``importlib.metadata.EntryPoint`` of an installed distribution."""

    group = "camkit"

    def __init__(
        self, name: str, load: Callable[[], object], dist: str = "camkit-test", version: str = "1.0"
    ) -> None:
        self.name = name
        self.value = f"{dist.replace('-', '_')}:plugin"
        self.dist = SimpleNamespace(name=dist, version=version)
        self.loads = 0
        self._load = load

    def load(self) -> object:
        self.loads += 1
        return self._load()


@dataclass
class EntryPoints:
    """The fake ``camkit`` entry-point group: what is "installed", and how often it was read."""

    installed: list[FakeEntryPoint] = field(default_factory=list)
    reads: int = 0

    def add(
        self, name: str, load: Callable[[], object], dist: str = "camkit-test", version: str = "1.0"
    ) -> FakeEntryPoint:
        """Install an entry point whose ``load()`` calls ``load``."""
        ep = FakeEntryPoint(name, load, dist, version)
        self.installed.append(ep)
        return ep


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> EntryPoints:
    """Replace the installed ``camkit`` entry points with a list the test fills in."""
    fake = EntryPoints()

    def read(**select: str) -> list[FakeEntryPoint]:
        fake.reads += 1
        return list(fake.installed) if select.get("group") == "camkit" else []

    monkeypatch.setattr(registry_module.metadata, "entry_points", read)
    return fake


# -- independent references ---------------------------------------------------------------


class Reference:
    """Direct re-implementations of the formulas camkit computes."""

    @staticmethod
    def capture(
        model: nn.Module, layer: nn.Module, x: Tensor, score: ScoreFn
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(A, dY/dA, scores)`` for the layer's output ``A`` and target scores ``score(out)``.

        The hook hands the rest of the model a clone, so in-place ops after the layer leave
        ``A`` as the layer produced it; the input requires grad so frozen models have a graph.
        """
        store: dict[str, Tensor] = {}

        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            store["act"] = output
            return output.clone()

        handle = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = model(x.detach().clone().requires_grad_(True))
                (grad,) = torch.autograd.grad(score(out).sum(), store["act"])
        finally:
            handle.remove()
        return store["act"].detach(), grad.detach(), out.detach()

    @staticmethod
    def pick(targets: list[int]) -> ScoreFn:
        """Score function taking ``scores[i, targets[i]]``."""
        return lambda s: torch.stack([s[i, t] for i, t in enumerate(targets)])

    @staticmethod
    def normalize(maps: Tensor) -> Tensor:
        """Per-sample min-max normalization; constant maps become zeros."""
        out = torch.zeros_like(maps)
        for i, m in enumerate(maps):
            lo, hi = m.min(), m.max()
            if hi > lo:
                out[i] = (m - lo) / (hi - lo)
        return out

    @staticmethod
    def upsample(maps: Tensor, size: tuple[int, ...]) -> Tensor:
        """Bilinear upsampling of ``(B, h, w)`` maps to ``size``."""
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    @classmethod
    def weighted(cls, weights: Tensor, acts: Tensor) -> Tensor:
        """``ReLU(sum_k w_k A_k)`` for ``(B, C)`` weights, one channel at a time."""
        cam = torch.zeros(acts.shape[0], *acts.shape[2:])
        for k in range(acts.shape[1]):
            cam += weights[:, k, None, None] * acts[:, k]
        return torch.relu(cam)

    @classmethod
    def gradcam(
        cls, model: nn.Module, layer: nn.Module, x: Tensor, score: ScoreFn
    ) -> tuple[Tensor, Tensor]:
        """Grad-CAM's ``(layer map (B, h, w), final map (B, H, W))``."""
        acts, grads, _ = cls.capture(model, layer, x, score)
        layer_map = cls.weighted(grads.mean(dim=(2, 3)), acts)
        return layer_map, cls.upsample(cls.normalize(layer_map), tuple(x.shape[2:]))

    @classmethod
    def cam(
        cls, model: nn.Module, layer: nn.Module, fc: nn.Linear, x: Tensor, targets: list[int]
    ) -> tuple[Tensor, Tensor]:
        """CAM's ``(layer map (B, h, w), final map (B, H, W))`` from the classifier ``fc``."""
        acts, _, _ = cls.capture(model, layer, x, lambda s: s.sum(1))
        weights = torch.stack([fc.weight[t].detach() for t in targets])
        layer_map = cls.weighted(weights, acts)
        return layer_map, cls.upsample(cls.normalize(layer_map), tuple(x.shape[2:]))


@pytest.fixture
def ref() -> type[Reference]:
    """The independent reference implementations."""
    return Reference


def assert_informative(layer_maps: Tensor) -> None:
    """Guard for reference layer maps ``(B, h, w)``: every sample varies over space, so a
    comparison of normalized maps can actually fail."""
    flat = layer_maps.flatten(1)
    spread = flat.amax(1) - flat.amin(1)
    assert bool((spread > 1e-3 * flat.abs().amax(1).clamp_min(1e-12)).all()), "constant map"
    assert bool(((flat > 0).float().mean(1) > 0.05).all()), "map almost all zero"


@pytest.fixture
def informative() -> Callable[[Tensor], None]:
    """``informative(layer_maps)`` fails when a reference map is constant (a vacuous test)."""
    return assert_informative
