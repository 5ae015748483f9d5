"""`camkit methods` and `camkit plugins` on a plugin registered at run time (no install)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Literal

import pytest
from torch import Tensor

import camkit
from camkit.cli import main


class Mode(str, enum.Enum):
    fast = "fast"
    exact = "exact"


class RichConfig(camkit.MethodConfig):
    batch_size: int = camkit.Field(16, gt=0, le=512, description="rows per forward pass")
    sigma: float | None = camkit.Field(None, ge=0.0)
    reduce: Literal["mean", "max"] = "mean"
    mode: Mode = Mode.fast
    size: tuple[int, int] = (3, 3)
    levels: list[float] = camkit.Field(default_factory=lambda: [0.5, 1.0], min_length=1)
    tag: str = camkit.Field(..., pattern="^[a-z]+$")


class RichCAM(camkit.Method):
    name = "test-rich"
    summary = "a method with every kind of option"
    paper = "Nobody, A Paper, 2024"
    aliases = ("test-rich-alias",)
    Config = RichConfig
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.activations.mean((2, 3))


class Plain(RichCAM):
    name = "test-plain"
    summary = "no options"
    aliases = ()
    Config = camkit.MethodConfig
    needs_gradients = False


class Plugin:
    @camkit.hookimpl
    def camkit_methods(self):
        return [RichCAM, Plain]


@pytest.fixture
def registered() -> Iterator[None]:
    camkit.register_plugin(Plugin(), "test-cli-plugin")
    try:
        yield
    finally:
        camkit.unregister_plugin("test-cli-plugin")


def test_methods_table(registered, capsys):
    assert main(["methods", "test-*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "needs", "source", "distribution", "summary"]
    assert lines[1].split()[:2] == ["test-plain", "activations"]
    assert lines[2].split()[:6] == [
        "test-rich", "gradients", "Nobody", "2024", "test-cli-plugin", "runtime",
    ]  # fmt: skip
    assert "test-cli-plugin runtime" in lines[1]
    assert lines[2].endswith("a method with every kind of option")
    # Columns line up: every summary starts where the header's does.
    col = lines[0].index("summary")
    assert lines[1][col:] == "no options"


def test_methods_json(registered, capsys):
    assert main(["methods", "test-*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["test-plain", "test-rich"]
    rich = rows[1]
    assert rich["needs_gradients"] is True
    assert (rich["distribution"], rich["version"]) == ("test-cli-plugin", "runtime")
    assert rich["aliases"] == ["test-rich-alias"]
    assert rich["config"]["properties"]["batch_size"]["default"] == 16


def test_method_detail_shows_schema_defaults_and_constraints(registered, capsys):
    assert main(["methods", "test-rich-alias"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:6] == [
        "test-rich (test-cli-plugin runtime)",
        "  a method with every kind of option",
        "  paper: Nobody, A Paper, 2024",
        "  aliases: test-rich-alias",
        "  needs gradients: yes",
        "  forward passes: one",
    ]
    fields = [line.strip() for line in out.splitlines()[7:]]
    assert fields == [
        "batch_size: int = 16  (> 0, <= 512)",
        "rows per forward pass",
        "sigma: float | None = None  (>= 0.0)",
        "reduce: 'mean' | 'max' = 'mean'",
        "mode: 'fast' | 'exact' = 'fast'",
        "size: tuple[int, int] = [3, 3]  (items >= 2, items <= 2)",
        "levels: list[float] = [0.5, 1.0]  (items >= 1)",
        "tag: str (required)  (matches '^[a-z]+$')",
    ]


def test_method_detail_without_options(registered, capsys):
    assert main(["methods", "test-plain"]) == 0
    assert "  config: (no options)" in capsys.readouterr().out.splitlines()


def test_method_detail_json(registered, capsys):
    assert main(["methods", "test-rich", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "test-rich"
    assert info["config"]["required"] == ["tag"]


def test_unknown_name_suggests_close_ones(registered, capsys):
    assert main(["methods", "test-rihc"]) == 2
    err = capsys.readouterr().err
    assert "no CAM method named 'test-rihc'" in err
    assert "Did you mean 'test-rich'" in err


def test_pattern_without_matches(capsys):
    assert main(["methods", "nothing-like-this-*"]) == 1
    assert "no method matches 'nothing-like-this-*'" in capsys.readouterr().err


def test_plugins_table_and_json(registered, capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "plugin",
        "distribution",
        "version",
        "status",
        "methods",
        "/",
        "error",
    ]
    assert lines[1].split()[:4] == ["camkit", "camkit", camkit.__version__, "ok"]
    (row,) = [line for line in lines if line.startswith("test-cli-plugin")]
    assert row.split() == [
        "test-cli-plugin",
        "test-cli-plugin",
        "runtime",
        "ok",
        "test-rich,",
        "test-plain",
    ]
    assert main(["plugins", "--json"]) == 0
    plugins = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert plugins["test-cli-plugin"]["methods"] == ["test-rich", "test-plain"]
    assert plugins["test-cli-plugin"]["error"] is None
