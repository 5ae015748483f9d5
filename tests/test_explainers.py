"""Explainers: non-CAM methods published by plugins through the ``camkit_explainers`` hook.

They are listed by ``camkit methods`` (a second table), described by ``camkit methods NAME``
and :func:`camkit.explainer_info`, and share one namespace with the methods.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from typing import Any

import pytest

import camkit
from camkit.cli import EXPLAINERS_HEADING, main
from camkit.errors import MethodNotFoundError, PluginError
from camkit.registry import registry

HAS_CONTRIB = importlib.util.find_spec("camkit_contrib") is not None

#: Points at real objects of this module, so ``load()`` can be checked.
SPEC = camkit.ExplainerSpec(
    name="test-concepts",
    aliases=("test-concept-finder",),
    summary="finds concepts (a test explainer)",
    paper="Nobody et al., Concepts Everywhere, NeurIPS 2031",
    target=f"{__name__}:Concepts",
    function=f"{__name__}:concepts",
    returns=f"{__name__}:ConceptsResult",
    example="Concepts(model)(images)",
)


@dataclasses.dataclass
class ConceptsResult:
    maps: list[int]


class Concepts:
    def __call__(self) -> ConceptsResult:
        return ConceptsResult([1, 2])


def concepts() -> ConceptsResult:
    return Concepts()()


class Publishes:
    """A plugin with the given explainers (and, optionally, methods)."""

    def __init__(self, *specs: Any, methods: tuple[type[camkit.Method], ...] = ()) -> None:
        self.specs, self.methods = list(specs), list(methods)

    @camkit.hookimpl
    def camkit_explainers(self) -> list[Any]:
        return self.specs

    @camkit.hookimpl
    def camkit_methods(self) -> list[type[camkit.Method]]:
        return self.methods


def spec(name: str, **changes: Any) -> camkit.ExplainerSpec:
    return dataclasses.replace(SPEC, **{"name": name, "aliases": (), **changes})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- registry -----------------------------------------------------------------------------


def test_a_registered_explainer_is_listed_and_described():
    camkit.register_plugin(Publishes(SPEC), "test-explainers")
    assert "test-concepts" in camkit.list_explainers()
    assert camkit.list_explainers("test-c*") == ["test-concepts"]
    assert camkit.list_explainers("zz*") == []
    info = camkit.explainer_info("Test_Concept_Finder")  # an alias, any case, _ for -
    assert info.name == "test-concepts" and info.spec is SPEC
    assert (info.distribution, info.version) == ("test-explainers", "runtime")
    assert info.load() is Concepts
    assert info.load("function")().maps == [1, 2]
    assert info.load("returns") is ConceptsResult
    assert SPEC.import_path() == f"from {__name__} import Concepts"
    # Explainers are not methods, and the plugin says what it provides.
    assert "test-concepts" not in camkit.list_methods()
    plugin = {p.name: p for p in camkit.list_plugins()}["test-explainers"]
    assert (plugin.status, plugin.methods, plugin.explainers) == ("ok", [], ["test-concepts"])

    camkit.unregister_plugin("test-explainers")
    assert "test-concepts" not in camkit.list_explainers()
    with pytest.raises(MethodNotFoundError, match="no explainer named 'test-concept-finder'"):
        camkit.explainer_info("test-concept-finder")


def test_an_explainer_is_no_method_and_a_method_no_explainer(tiny):
    camkit.register_plugin(Publishes(SPEC), "test-explainers")
    with pytest.raises(MethodNotFoundError) as info:
        camkit.create("test-concepts", tiny, "features")
    message = str(info.value)
    assert "'test-concepts' is no CAM method but an explainer" in message
    assert f"from {__name__} import Concepts" in message
    with pytest.raises(MethodNotFoundError, match="'gradcam' is a CAM method, not an explainer"):
        camkit.explainer_info("gradcam")
    # A typo of an explainer's name is offered the explainer.
    with pytest.raises(MethodNotFoundError, match="Did you mean 'test-concepts'"):
        camkit.method_info("test-concpets")
    with pytest.raises(MethodNotFoundError, match="Did you mean 'test-concepts'"):
        camkit.explainer_info("test-concpets")


class Clash(camkit.Method):
    name = "test-clash"
    summary = "a method"

    def weights(self, ctx: camkit.Context) -> Any:
        return ctx.activations.mean((2, 3))


@pytest.mark.parametrize(
    ("first", "second", "claimed"),
    [
        (Publishes(spec("gradcam")), None, "gradcam"),
        (Publishes(spec("x", aliases=("grad-cam",))), None, "grad-cam"),
        (Publishes(SPEC), Publishes(spec("test-concept-finder")), "test-concept-finder"),
        (Publishes(SPEC), Publishes(methods=(Clash,)), None),
    ],
    ids=["explainer-vs-builtin", "alias-vs-builtin-alias", "explainer-vs-explainer", "ok"],
)
def test_name_collisions_name_both_distributions(first, second, claimed):
    if second is None:  # the collision is with a built-in method
        with pytest.raises(PluginError) as info:
            camkit.register_plugin(first, "test-first")
        message = str(info.value)
        assert f"explainer name {claimed!r} is claimed twice" in message
        assert "by method 'gradcam' of distribution 'camkit'" in message
        assert "distribution 'test-first'" in message
        assert "test-first" not in {p.name for p in camkit.list_plugins()}
        return
    camkit.register_plugin(first, "test-first")
    if claimed is None:
        camkit.register_plugin(second, "test-second")
        assert "test-clash" in camkit.list_methods()
        return
    with pytest.raises(PluginError) as info:
        camkit.register_plugin(second, "test-second")
    message = str(info.value)
    assert f"explainer name {claimed!r} is claimed twice" in message
    assert "by explainer 'test-concepts' of distribution 'test-first'" in message
    assert "by explainer 'test-concept-finder' of distribution 'test-second'" in message
    # Nothing of the rejected plugin is left, and the first one is intact.
    assert camkit.list_explainers("test-*") == ["test-concepts"]


def test_a_method_may_not_take_an_explainers_name():
    camkit.register_plugin(Publishes(SPEC), "test-first")

    class Taker(Clash):
        name = "test-concepts"

    with pytest.raises(PluginError) as info:
        camkit.register_plugin(Publishes(methods=(Taker,)), "test-second")
    assert (
        "method name 'test-concepts' is claimed twice: by explainer 'test-concepts' of "
        "distribution 'test-first' and by method 'test-concepts' of distribution 'test-second'"
    ) in str(info.value)


def test_two_explainers_of_one_plugin_may_not_share_a_name():
    with pytest.raises(PluginError, match="'test-concepts' is claimed twice"):
        camkit.register_plugin(Publishes(SPEC, spec("test-concepts")), "test-twins")
    assert camkit.list_explainers("test-*") == []


@pytest.mark.parametrize(
    ("returned", "match"),
    [
        ([object()], "which is not a camkit.ExplainerSpec"),
        (SPEC, r"camkit_explainers\(\) must return a list of ExplainerSpec"),
        ([spec("Bad Name")], "claims the name 'Bad Name'; names are lower-case"),
        ([spec("ok", aliases=("no_underscores",))], "claims the name 'no_underscores'"),
        ([spec("ok", target="camkit_contrib.dff")], "target 'camkit_contrib.dff' is not of"),
        ([spec("ok", returns="a:b c")], "returns 'a:b c' is not of the form"),
        ([spec("ok", function="nope")], "function 'nope' is not of the form"),
    ],
)
def test_a_bad_spec_is_refused_when_registered_by_hand(returned, match):
    class Bad:
        @camkit.hookimpl
        def camkit_explainers(self) -> Any:
            return returned

    with pytest.raises(PluginError, match=match):
        camkit.register_plugin(Bad(), "test-bad")
    assert "test-bad" not in {p.name for p in camkit.list_plugins()}


def test_an_installed_plugin_with_a_bad_or_failing_hook_is_broken(entry_points):
    class Failing:
        @camkit.hookimpl
        def camkit_explainers(self) -> list[Any]:
            raise RuntimeError("explainer hook failed")

    class Wrong:
        @camkit.hookimpl
        def camkit_explainers(self) -> list[Any]:
            return ["dff"]

    entry_points.add("failing", Failing, dist="camkit-failing")
    entry_points.add("wrong", Wrong, dist="camkit-wrong")
    entry_points.add("good", lambda: Publishes(SPEC), dist="camkit-good", version="2.0")
    plugins = {p.name: p for p in camkit.list_plugins()}
    assert plugins["failing"].status == "broken"
    assert str(plugins["failing"].error) == "explainer hook failed"
    assert plugins["wrong"].status == "broken"
    assert "not a camkit.ExplainerSpec" in str(plugins["wrong"].error)
    # camkit and the good plugin keep working.
    assert camkit.list_explainers() == ["test-concepts"]
    assert camkit.explainer_info("test-concepts").distribution == "camkit-good"
    assert "gradcam" in camkit.list_methods()


def test_installed_explainers_colliding_name_both_distributions(entry_points, monkeypatch):
    entry_points.add("a-plugin", lambda: Publishes(spec("shared")), dist="camkit-a")
    entry_points.add("b-plugin", lambda: Publishes(spec("shared")), dist="camkit-b")
    with pytest.raises(PluginError, match=r"'camkit-a'.*'camkit-b'.*CAMKIT_DISABLE_PLUGINS"):
        camkit.list_explainers()
    monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", "b-plugin")
    registry.reload()
    assert camkit.explainer_info("shared").distribution == "camkit-a"


def test_the_spec_is_plain_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.name = "other"  # type: ignore[misc]
    assert dataclasses.asdict(SPEC)["target"] == f"{__name__}:Concepts"


# -- command line -------------------------------------------------------------------------


@pytest.fixture
def published() -> None:
    camkit.register_plugin(Publishes(SPEC), "test-explainers")


def test_methods_lists_explainers_in_a_second_table(capsys, published):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    methods, _, explainers = out.partition("\n\n" + EXPLAINERS_HEADING + "\n")
    assert explainers, out
    assert "gradcam" in methods and "test-concepts" not in methods
    header, *rows = explainers.splitlines()
    assert header.split() == ["name", "needs", "source", "distribution", "summary"]
    row = next(r for r in rows if r.startswith("test-concepts "))
    assert row.split()[1:5] == ["activations", "Nobody", "2031", "test-explainers"]
    assert row.endswith("finds concepts (a test explainer)")


def test_patterns_apply_to_both_tables(capsys, published):
    code, out, _ = run(capsys, "methods", "test-*")
    assert code == 0
    # No method matches: only the explainers' table, under its heading.
    assert out.splitlines()[0] == EXPLAINERS_HEADING
    assert "test-concepts" in out
    code, out, _ = run(capsys, "methods", "*gradcam*")
    assert code == 0 and EXPLAINERS_HEADING not in out and "test-concepts" not in out
    code, _, err = run(capsys, "methods", "zz*")
    assert code == 1 and "no method matches 'zz*' (nor does any explainer)" in err


def test_explainer_detail(capsys, published):
    code, out, _ = run(capsys, "methods", "test-concept-finder")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "test-concepts (test-explainers runtime): an explainer, not a CAM method"
    assert "  paper: Nobody et al., Concepts Everywhere, NeurIPS 2031" in lines
    assert "  aliases: test-concept-finder" in lines
    assert f"  call: from {__name__} import Concepts" in lines
    assert f"    or: from {__name__} import concepts" in lines
    assert "  example: Concepts(model)(images)" in lines
    assert f"  returns: ConceptsResult ({__name__})" in lines

    code, out, _ = run(capsys, "methods", "test-concepts", "--json")
    data = json.loads(out)
    assert data["kind"] == "explainer" and data["name"] == "test-concepts"
    assert data["target"] == SPEC.target and data["returns"] == SPEC.returns
    assert data["function"] == SPEC.function and data["needs"] == "activations"
    assert data["distribution"] == "test-explainers"


def test_json_keeps_the_methods_list_and_lists_explainers_apart(capsys, published):
    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == camkit.list_methods()
    assert {d["kind"] for d in data} == {"method"}

    code, out, _ = run(capsys, "methods", "--explainers", "--json")
    assert code == 0
    assert [d["name"] for d in json.loads(out)] == camkit.list_explainers()
    code, out, _ = run(capsys, "methods", "test-*", "--explainers", "--json")
    assert [d["name"] for d in json.loads(out)] == ["test-concepts"]
    code, out, _ = run(capsys, "methods", "zz*", "--explainers", "--json")
    assert code == 0 and json.loads(out) == []

    code, out, _ = run(capsys, "methods", "--explainers")
    assert code == 0 and out.splitlines()[0] == EXPLAINERS_HEADING
    assert "gradcam" not in out


def test_unknown_name_suggests_an_explainer(capsys, published):
    code, out, err = run(capsys, "methods", "test-concpets")
    assert code != 0 and out == ""
    assert "Did you mean 'test-concepts'" in err


def test_plugins_shows_the_explainers(capsys, published):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    line = next(r for r in out.splitlines() if r.startswith("test-explainers "))
    assert line.endswith("explainers: test-concepts")
    code, out, _ = run(capsys, "plugins", "--json")
    data = {p["name"]: p for p in json.loads(out)}
    assert data["test-explainers"]["explainers"] == ["test-concepts"]
    assert data["camkit"]["explainers"] == []


# -- camkit-contrib -----------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CONTRIB, reason="camkit-contrib is not installed")
def test_contrib_publishes_deep_feature_factorization(capsys):
    from camkit_contrib import dff

    assert "dff" in camkit.list_explainers()
    info = camkit.explainer_info("deep-feature-factorization")
    assert (info.name, info.distribution) == ("dff", "camkit-contrib")
    assert info.load() is dff.DeepFeatureFactorization
    assert info.load("function") is dff.deep_feature_factorization
    assert info.load("returns") is dff.DFFResult
    assert "Collins" in info.paper and "2018" in info.paper
    assert "dff" not in camkit.list_methods()
    code, out, _ = run(capsys, "methods")
    assert code == 0
    explainers = out.partition(EXPLAINERS_HEADING)[2]
    assert next(r for r in explainers.splitlines() if r.startswith("dff ")).split()[2:4] == [
        "Collins",
        "2018",
    ]
    code, out, _ = run(capsys, "methods", "*f*")
    assert "dff " in out.partition(EXPLAINERS_HEADING)[2] and "fullgrad" in out
    code, out, _ = run(capsys, "methods", "dff")
    assert code == 0
    assert "  call: from camkit_contrib.dff import DeepFeatureFactorization" in out
    assert "  returns: DFFResult (camkit_contrib.dff)" in out
