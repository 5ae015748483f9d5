"""The bad-input table of docs/errors.md, row by row.

Each row of the doc's table names a case, an error class and the exact message; each case
here provokes it. The test fails when a documented case no longer raises what the doc says,
when a case here is missing from the doc (or the other way round), and when an error class
of :mod:`camkit.errors` is documented nowhere.
"""

from __future__ import annotations

import re
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import camkit
from camkit import errors
from camkit.registry import registry

from .models import TinyCNN, TinySegmenter

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each case starts from, and leaves behind, a registry rebuilt from the environment."""
    registry.reload()
    yield
    registry.reload()


def _tiny() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


def _x(*shape: int) -> Tensor:
    return torch.randn(*(shape or (2, 3, 8, 8)), generator=torch.Generator().manual_seed(0))


def _gradcam(model: nn.Module | None = None, layer: object = "features", **kw: object):
    return camkit.create("gradcam", model or _tiny(), layer, **kw)


class _Null(nn.Module):
    """A layer whose output is not a tensor."""

    def forward(self, x: Tensor) -> None:
        return None


class _Wrap(nn.Module):
    """TinyCNN inside a forward that does something to it (``how``)."""

    def __init__(self, how: Callable[[nn.Module, Tensor], object]) -> None:
        super().__init__()
        self.net = _tiny()
        self.aux = nn.Conv2d(3, 2, 1)
        self.null = _Null()
        self.how = how

    def forward(self, x: Tensor) -> object:
        return self.how(self, x)


def _wrapped(how: Callable[[nn.Module, Tensor], object], layer: str = "net.features") -> None:
    _gradcam(_Wrap(how).eval(), layer)(_x())


def _no_grad(m: nn.Module, x: Tensor) -> Tensor:
    # A frozen backbone: the features come out of a no-grad region, the head is outside it.
    with torch.no_grad():
        features = m.net.features(x)
    return m.net.fc(features.mean((2, 3)))


class _Tokens(nn.Module):
    """Patch embedding (patch 8) with five leading tokens: too many to tell from the grid."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 4, 8, stride=8)
        self.tokens = nn.Identity()
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.tokens(torch.cat([patches.new_zeros(len(x), 5, 4), patches], 1))
        return self.head(tokens.mean(1))


def _plugin(returned: object) -> object:
    """A run-time plugin whose ``camkit_methods`` hook returns ``returned``."""
    return types.SimpleNamespace(camkit_methods=camkit.hookimpl(lambda: returned))


def _method(name: str, **attrs: object) -> type[camkit.Method]:
    return type("MyCAM", (camkit.Method,), {"name": name, **attrs})


def _run_method(weights: Callable[[camkit.Context], Tensor]) -> None:
    method = _method("test-method", weights=lambda self, ctx: weights(ctx))()
    camkit.Extractor(method, _tiny(), "features")(_x())


def _broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    def load() -> object:
        raise ImportError("No module named 'torch_magic'")

    entry = types.SimpleNamespace(
        name="brokencam",
        dist=types.SimpleNamespace(name="camkit-brokencam", version="0.1"),
        load=load,
    )
    monkeypatch.setattr(
        "camkit.registry.metadata.entry_points",
        lambda group: [entry] if group == "camkit" else [],
    )
    registry.reload()
    camkit.create("brokencam", _tiny())


#: case id -> code that raises it (given pytest's monkeypatch).
CASES: dict[str, Callable[[pytest.MonkeyPatch], object]] = {
    # layers
    "layer-typo": lambda mp: _gradcam(layer="featurs"),
    "layer-index": lambda mp: _gradcam(layer="features[9]"),
    "layer-unparsable": lambda mp: _gradcam(layer="features[x]"),
    "layer-foreign-module": lambda mp: _gradcam(layer=nn.Conv2d(3, 3, 1)),
    "layer-wrong-type": lambda mp: _gradcam(layer=3),
    "layer-empty-list": lambda mp: _gradcam(layer=[]),
    "layer-never-runs": lambda mp: _wrapped(lambda m, x: m.net(x), "aux"),
    "layer-returns-none": lambda mp: _wrapped(lambda m, x: (m.null(x), m.net(x))[1], "null"),
    "layer-not-spatial": lambda mp: _gradcam(layer="fc")(_x()),
    "layer-auto-nothing-spatial": lambda mp: _gradcam(
        nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), None
    )(_x()),
    "layer-non-finite": lambda mp: _wrapped(lambda m, x: m.net(x * float("inf"))),
    "tokens-no-grid": lambda mp: _gradcam(_Tokens(), "tokens")(_x(1, 3, 32, 32)),
    "cam-classifier-width": lambda mp: camkit.create("cam", _tiny(), "features.0")(_x()),
    "cam-no-linear": lambda mp: camkit.create(
        "cam", nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), "0"
    )(_x()),
    # targets
    "cam-class-token": lambda mp: camkit.create("cam", _Tokens(), "tokens", grid=(4, 4))(
        _x(1, 3, 32, 32)
    ),
    "target-out-of-range": lambda mp: _gradcam()(_x(), targets=7),
    "target-batch-mismatch": lambda mp: _gradcam()(_x(), targets=[1, 2, 3]),
    "target-bool": lambda mp: _gradcam()(_x(), targets=True),
    "target-float-tensor": lambda mp: _gradcam()(_x(), targets=torch.tensor([0.5, 1.0])),
    "target-wrong-type": lambda mp: _gradcam()(_x(), targets="cat"),
    "target-callable-shape": lambda mp: _gradcam()(_x(), targets=lambda s: s),
    "target-index-dense-output": lambda mp: _gradcam(TinySegmenter().eval(), "backbone")(
        _x(), targets=1
    ),
    "target-callable-for-cam": lambda mp: camkit.create("cam", _tiny(), "features")(
        _x(), targets=lambda s: s[:, 0]
    ),
    "target-mask-shape": lambda mp: _gradcam(TinySegmenter().eval(), "backbone")(
        _x(), targets=camkit.targets.SegmentationTarget(1, torch.ones(4, 4))
    ),
    # inputs
    "input-not-tensor": lambda mp: _gradcam()(_x().numpy()),
    "input-no-batch": lambda mp: _gradcam()(_x(3, 8, 8)),
    "input-rank": lambda mp: _gradcam()(_x(8, 8)),
    "input-integer": lambda mp: _gradcam()(_x().long()),
    "input-empty": lambda mp: _gradcam()(_x(0, 3, 8, 8)),
    "input-nan": lambda mp: _gradcam()(_x() * float("nan")),
    "input-inf": lambda mp: _gradcam()(_x() / 0),
    "input-device": lambda mp: _gradcam(_tiny().to("meta"))(_x()),
    "model-not-module": lambda mp: camkit.create("gradcam", lambda x: x),
    "overlay-map-shape": lambda mp: camkit.overlay(torch.zeros(3, 8, 8), torch.zeros(2, 8, 8)),
    # model outputs
    "output-ambiguous-dict": lambda mp: _wrapped(lambda m, x: {"a": m.net(x), "b": m.net(x)}),
    "output-no-scores": lambda mp: _wrapped(lambda m, x: [m.net(x).argmax(1).tolist()]),
    "output-non-finite": lambda mp: _wrapped(lambda m, x: m.net(x) / 0),
    # gradients
    "gradient-unused-layer": lambda mp: _wrapped(lambda m, x: (m.aux(x), m.net(x))[1], "aux"),
    "gradient-detached": lambda mp: _wrapped(
        lambda m, x: m.net.fc(m.net.features(x).detach().mean((2, 3)))
    ),
    "gradient-blocked": lambda mp: _wrapped(_no_grad),
    "gradient-non-finite": lambda mp: _wrapped(
        lambda m, x: m.net.fc(m.net.features(x).sqrt().mean((2, 3)))
    ),
    # configuration
    "config-unknown-key": lambda mp: _gradcam(batchsize=3),
    "config-bad-value": lambda mp: camkit.create("cam", _tiny(), fc_layer=3),
    "config-layout": lambda mp: _gradcam(layout="NCHW"),
    "config-grid": lambda mp: _gradcam(grid=(14,)),
    "method-unknown": lambda mp: camkit.create("gradkam", _tiny()),
    # plugins
    "plugin-broken": _broken_entry_point,
    "plugin-duplicate-name": lambda mp: camkit.register_plugin(
        _plugin([_method("gradcam", weights=lambda s, c: c.gradients)]), "my-plugin"
    ),
    "plugin-not-a-method": lambda mp: camkit.register_plugin(_plugin([dict]), "my-plugin"),
    "plugin-bad-name": lambda mp: camkit.register_plugin(
        _plugin([_method("My_CAM", weights=lambda s, c: c.gradients)]), "my-plugin"
    ),
    "plugin-no-strategy": lambda mp: camkit.register_plugin(
        _plugin([_method("nocam")]), "my-plugin"
    ),
    "plugin-hook-not-list": lambda mp: camkit.register_plugin(_plugin("gradcam"), "my-plugin"),
    "plugin-weights-shape": lambda mp: _run_method(lambda ctx: ctx.activations.mean(1)),
    "plugin-non-finite-map": lambda mp: _run_method(
        lambda ctx: torch.full(ctx.activations.shape[:2], float("nan"))
    ),
    "plugin-score-masks": lambda mp: _run_method(lambda ctx: ctx.score(ctx.activations[0])),
    "plugin-gradients-at-batch": lambda mp: _run_method(
        lambda ctx: ctx.gradients_at(ctx.inputs[:1]).mean((2, 3))
    ),
    # map helpers
    "fuse-empty": lambda mp: camkit.fuse([]),
    "fuse-mismatch": lambda mp: camkit.fuse([torch.zeros(2, 3, 3), torch.zeros(1, 3, 3)]),
    "fuse-bare-tensor": lambda mp: camkit.fuse(torch.zeros(2, 3, 3)),  # type: ignore[arg-type]
    # experiments (tests/experiment/test_user_errors.py has every case)
    "experiment-output-is-a-file": lambda mp: _in_experiment_folder(mp, "output-file"),
    "experiment-folder-locked": lambda mp: _in_experiment_folder(mp, "locked"),
    "experiment-image-unreadable": lambda mp: _in_experiment_folder(mp, "image"),
    "weights-missing-file": lambda mp: _load("torchvision:resnet18", "/nonexistent/resnet.pt"),
    "weights-offline": lambda mp: _offline(mp),
}


def _in_experiment_folder(mp: pytest.MonkeyPatch, case: str) -> None:
    from camkit.experiment.data import read_image
    from camkit.experiment.folder import FolderLock, claim

    mp.chdir(tempfile.mkdtemp())
    if case == "output-file":
        Path("f").write_text("mine")
        claim(Path("f"), overwrite=False)
    elif case == "locked":
        claim(Path("out"), overwrite=False)
        with FolderLock(Path("out")), FolderLock(Path("out")):
            pass
    else:
        Path("bad.png").write_text("not an image")
        read_image(Path("bad.png"), (8, 8))


def _load(source: str, weights: str) -> object:
    from camkit.experiment.models import load_model

    return load_model(source, weights)


def _offline(mp: pytest.MonkeyPatch) -> object:
    """Pretrained weights asked for with an empty torch cache and no network."""
    import tempfile
    import urllib.error

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    mp.setenv("TORCH_HOME", tempfile.mkdtemp())
    mp.setattr(torch.hub, "download_url_to_file", no_network)
    return _load("torchvision:resnet18", "DEFAULT")


# -- the doc ---------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _code(cell: str) -> str:
    match = re.fullmatch(r"`(.*)`", cell)
    assert match, f"expected a `code` cell, got {cell!r}"
    return match.group(1)


def _section(title: str) -> list[list[str]]:
    """The rows (cells) of the table under the ``## title`` heading of docs/errors.md."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    return [_cells(line) for line in lines[2:]]  # skip the header and its rule


BAD_INPUT = {_code(row[0]): row for row in _section("Bad input table")}
CLASSES = {_code(row[0]): row for row in _section("Error classes")}


def test_every_case_is_documented_and_every_documented_case_is_tested() -> None:
    assert sorted(set(CASES) - set(BAD_INPUT)) == [], "cases missing from docs/errors.md"
    assert sorted(set(BAD_INPUT) - set(CASES)) == [], "documented cases with no test"


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_documented_case_raises_documented_error(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, error, _, message = BAD_INPUT[case]
    with pytest.raises(errors.CamkitError) as info:
        CASES[case](monkeypatch)
    got = f"| `{case}` | `{type(info.value).__name__}` | ... | `{info.value!s}` |"
    assert type(info.value).__name__ == _code(error), got
    # "…" in a documented message stands for text that depends on what is installed.
    pattern = ".*".join(re.escape(part) for part in _code(message).split("…"))
    assert re.fullmatch(pattern, str(info.value), flags=re.DOTALL), got


def test_error_classes_table_matches_camkit_errors() -> None:
    defined = {
        name: cls
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.CamkitError)
    }
    assert sorted(CLASSES) == sorted(defined)
    for name, row in CLASSES.items():
        bases = [b.strip(" `") for b in row[1].split(",") if b.strip()]
        assert bases == [b.__name__ for b in defined[name].__bases__], name


def test_every_error_class_is_raised_by_a_documented_case() -> None:
    raised = {_code(row[1]) for row in BAD_INPUT.values()}
    # Every class but the base, which is never raised as such.
    assert sorted(set(CLASSES) - raised) == ["CamkitError"]
