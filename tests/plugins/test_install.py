"""Plugin distributions installed for real with pip, discovered through their entry points."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

import camkit
from camkit.cli import main
from camkit.errors import MethodNotFoundError, PluginError
from camkit.testing import check_method, tiny_inputs, tiny_model

pytestmark = pytest.mark.install

GOOD = """
    import camkit

    class SignCAM(camkit.Method):
        '''Test plugin: channels weighted by the sign of their mean gradient.'''

        name = "throwaway-signcam"
        summary = "sign of the mean gradient"
        aliases = ("throwaway-sign",)
        needs_gradients = True

        def weights(self, ctx):
            return ctx.gradients.mean((2, 3)).sign()

    @camkit.hookimpl
    def camkit_methods():
        return [SignCAM]
"""

BROKEN_IMPORT = """
    raise ImportError("camkit_throwaway_broken needs a library that is not installed")
"""

BROKEN_HOOK = """
    import camkit

    @camkit.hookimpl
    def camkit_methods():
        raise RuntimeError("this hook always fails")
"""

CONTRIB = [
    "hirescam",
    "gradcam-elementwise",
    "eigencam",
    "eigengradcam",
    "ablationcam",
    "randomcam",
]


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory, installer) -> Iterator[None]:
    """A good and a broken distribution, the docs' example plugin and camkit-contrib."""
    root = tmp_path_factory.mktemp("dists")
    projects = [
        installer.write(
            root,
            "camkit-throwaway-good",
            {"camkit_throwaway_good": GOOD},
            {"throwaway-signcam": "camkit_throwaway_good"},
            version="1.2.3",
        ),
        installer.write(
            root,
            "camkit-throwaway-broken",
            {"camkit_throwaway_broken": BROKEN_IMPORT, "camkit_throwaway_badhook": BROKEN_HOOK},
            {
                "throwaway-broken": "camkit_throwaway_broken",
                "throwaway-badhook": "camkit_throwaway_badhook",
            },
        ),
    ]
    distributions = ["camkit-throwaway-good", "camkit-throwaway-broken"]
    modules = ["camkit_throwaway_good", "camkit_throwaway_broken", "camkit_throwaway_badhook"]
    # Distributions the developer already installed are used as they are, and kept.
    for project, dist, module in [
        (
            installer.repo / "examples" / "plugin-example",
            "camkit-plugin-example",
            "camkit_plugin_example",
        ),
        (installer.repo / "plugins" / "camkit-contrib", "camkit-contrib", "camkit_contrib"),
    ]:
        if installer.not_installed(dist):
            projects.append(installer.copy(project, root))
            distributions.append(dist)
            modules.append(module)
    with installer.installed(projects, distributions, modules):
        yield


def test_discovered_through_its_entry_point(environment):
    assert "throwaway-signcam" in camkit.list_methods()
    assert camkit.list_methods("throwaway-*") == ["throwaway-signcam"]
    info = camkit.method_info("throwaway-sign")
    assert (info.name, info.distribution, info.version) == (
        "throwaway-signcam",
        "camkit-throwaway-good",
        "1.2.3",
    )
    (plugin,) = [p for p in camkit.list_plugins() if p.name == "throwaway-signcam"]
    assert (plugin.status, plugin.methods) == ("ok", ["throwaway-signcam"])


def test_installed_method_runs_like_a_builtin(environment):
    model, x = tiny_model(), tiny_inputs()
    result = check_method("throwaway-signcam", model, "features")
    feats = model.features(x)
    scores = model.fc(model.pool(feats).flatten(1))
    (grads,) = torch.autograd.grad(scores.max(1).values.sum(), feats)
    expected = torch.relu((grads.mean((2, 3)).sign()[:, :, None, None] * feats).sum(1))
    torch.testing.assert_close(result.layer_maps["features"], expected.detach())


def test_broken_plugins_are_listed_and_camkit_keeps_working(environment):
    plugins = {p.name: p for p in camkit.list_plugins()}
    broken = plugins["throwaway-broken"]
    assert broken.status == "broken"
    assert broken.distribution == "camkit-throwaway-broken"
    assert isinstance(broken.error, ImportError)
    assert "not installed" in str(broken.error)
    badhook = plugins["throwaway-badhook"]
    assert badhook.status == "broken"
    assert isinstance(badhook.error, RuntimeError)
    # Everything else still loads and runs.
    assert {"cam", "gradcam", "throwaway-signcam"} <= set(camkit.list_methods())
    check_method("gradcam")
    with pytest.raises(PluginError, match="camkit-throwaway-broken") as err:
        camkit.create("throwaway-broken", tiny_model())
    assert isinstance(err.value.__cause__, ImportError)


@pytest.mark.parametrize("blocked", ["throwaway-signcam", "camkit-throwaway-good"])
def test_disable_plugins_by_entry_point_or_distribution(environment, monkeypatch, blocked):
    monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", f"someother,{blocked}")
    assert "throwaway-signcam" not in camkit.list_methods()
    (plugin,) = [p for p in camkit.list_plugins() if p.name == "throwaway-signcam"]
    assert plugin.status == "blocked"
    with pytest.raises(MethodNotFoundError, match="CAMKIT_DISABLE_PLUGINS"):
        camkit.create("throwaway-signcam", tiny_model())
    # Blocking the broken plugin also silences it: it is never imported.
    monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", "throwaway-broken")
    camkit.registry.registry.reload()
    status = {p.name: p.status for p in camkit.list_plugins()}
    assert status["throwaway-broken"] == "blocked"
    assert status["throwaway-signcam"] == "ok"


def test_no_plugin_autoload_loads_builtins_only(environment, monkeypatch):
    monkeypatch.setenv("CAMKIT_NO_PLUGIN_AUTOLOAD", "1")
    assert [p.name for p in camkit.list_plugins()] == ["camkit"]
    assert "throwaway-signcam" not in camkit.list_methods()


def test_cli_lists_distribution_version_and_status(environment, capsys):
    assert main(["methods", "throwaway-*"]) == 0
    out, err = capsys.readouterr()
    (row,) = [line for line in out.splitlines() if line.startswith("throwaway-signcam")]
    assert row.split()[:2] == ["throwaway-signcam", "gradients"]
    assert "camkit-throwaway-good 1.2.3" in row
    assert "throwaway-broken" in err and "camkit plugins" in err

    assert main(["plugins"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["throwaway-broken"].split()[1:4] == ["camkit-throwaway-broken", "1.0.0", "broken"]
    assert "ImportError: camkit_throwaway_broken needs" in lines["throwaway-broken"]
    assert "RuntimeError: this hook always fails" in lines["throwaway-badhook"]
    assert lines["throwaway-signcam"].split()[3:] == ["ok", "throwaway-signcam"]


def test_contrib_methods_usable_through_create(environment):
    assert set(CONTRIB) <= set(camkit.list_methods())
    for name in CONTRIB:
        assert camkit.method_info(name).distribution == "camkit-contrib"
        check_method(name, batch_consistent=name != "randomcam")


def test_the_docs_example_plugin_passes_its_own_tests(environment, installer):
    # A fresh process: the plugin is found through its entry point there too.
    example = installer.repo / "examples" / "plugin-example"
    assert camkit.method_info("gradcam-topk").distribution == "camkit-plugin-example"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example / "tests")],
        capture_output=True,
        text=True,
        cwd=example,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


COLLIDING = """
    import camkit

    class Dup(camkit.Method):
        name = "{name}"
        aliases = {aliases!r}
        summary = "collides"

        def weights(self, ctx):
            return ctx.activations.mean((2, 3))

    @camkit.hookimpl
    def camkit_methods():
        return [Dup]
"""


@pytest.fixture(scope="module")
def colliding(tmp_path_factory: pytest.TempPathFactory, installer) -> Iterator[None]:
    """Two distributions that both claim the method name ``throwaway-dup``."""
    root = tmp_path_factory.mktemp("colliding")
    projects = [
        installer.write(
            root,
            "camkit-throwaway-first",
            {"camkit_throwaway_first": COLLIDING.format(name="throwaway-dup", aliases=())},
            {"throwaway-first": "camkit_throwaway_first"},
        ),
        installer.write(
            root,
            "camkit-throwaway-second",
            {
                "camkit_throwaway_second": COLLIDING.format(
                    name="throwaway-second", aliases=("throwaway-dup",)
                )
            },
            {"throwaway-second": "camkit_throwaway_second"},
        ),
    ]
    with installer.installed(
        projects,
        ["camkit-throwaway-first", "camkit-throwaway-second"],
        ["camkit_throwaway_first", "camkit_throwaway_second"],
    ):
        yield


def test_a_name_claimed_by_two_distributions(colliding, monkeypatch):
    with pytest.raises(PluginError) as err:
        camkit.list_methods()
    message = str(err.value)
    assert "'throwaway-dup'" in message
    assert "camkit-throwaway-first" in message and "camkit-throwaway-second" in message
    assert "CAMKIT_DISABLE_PLUGINS" in message
    # Nothing was silently overwritten, and blocking either one resolves it.
    for blocked, kept in [
        ("throwaway-second", "camkit-throwaway-first"),
        ("camkit-throwaway-first", "camkit-throwaway-second"),
    ]:
        monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", blocked)
        camkit.registry.registry.reload()
        assert camkit.method_info("throwaway-dup").distribution == kept


def test_collision_reported_by_the_cli(colliding, capsys):
    assert main(["methods"]) == 2
    err = capsys.readouterr().err
    assert "camkit-throwaway-first" in err and "camkit-throwaway-second" in err
