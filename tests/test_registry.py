"""The method registry: built-ins, run-time and entry-point plugins, collisions, broken plugins.

This module is itself a plugin: its ``camkit_methods`` hook provides ``powered-gradcam``.
"""

from __future__ import annotations

import fnmatch
import importlib
import sys

import pytest
import torch
from torch import Tensor

import camkit
from camkit.errors import ConfigError, MethodNotFoundError, PluginError
from camkit.registry import registry

THIS_MODULE = sys.modules[__name__]
MISSING_MODULE = "camkit_test_plugin_that_is_not_installed"


class PowerConfig(camkit.MethodConfig):
    power: float = camkit.Field(1.0, gt=0, description="exponent of the channel weights")


class PoweredGradCAM(camkit.Method):
    """Grad-CAM with powered weights: ``w_k = (mean_ij dY/dA_k(i, j)) ** power``."""

    name = "powered-gradcam"
    summary = "Grad-CAM with powered weights"
    paper = "a test plugin"
    aliases = ("pgcam",)
    Config = PowerConfig
    needs_gradients = True

    def weights(self, ctx: camkit.Context) -> Tensor:
        return ctx.gradients.mean((2, 3)) ** self.config.power


@camkit.hookimpl
def camkit_methods() -> list[type[camkit.Method]]:
    return [PoweredGradCAM]


class Provides:
    """A plugin object providing the given method classes."""

    def __init__(self, *classes: object) -> None:
        self.classes = classes

    @camkit.hookimpl
    def camkit_methods(self) -> list[object]:
        return list(self.classes)


def named(name: str, aliases: tuple[str, ...] = ()) -> type[camkit.Method]:
    """A trivial Grad-CAM-like method class called ``name``."""
    return type(
        "Named",
        (PoweredGradCAM,),
        {"name": name, "aliases": aliases, "__qualname__": f"Named[{name}]"},
    )


def install_broken(entry_points) -> None:
    """An installed plugin whose module cannot be imported."""
    entry_points.add(
        "brokencam", lambda: importlib.import_module(MISSING_MODULE), dist="camkit-broken"
    )


# -- built-ins --------------------------------------------------------------------------------


def test_builtins_are_listed_sorted():
    names = camkit.list_methods()
    assert {"cam", "gradcam"} <= set(names)
    assert names == sorted(names)
    assert {p.name: p.status for p in camkit.list_plugins()}["camkit"] == "ok"


def test_pattern_filter():
    grad = camkit.list_methods("*grad*")
    assert "gradcam" in grad and "cam" not in grad
    assert grad == [n for n in camkit.list_methods() if fnmatch.fnmatchcase(n, "*grad*")]
    assert camkit.list_methods("cam") == ["cam"]
    assert camkit.list_methods("CAM") == ["cam"]
    assert camkit.list_methods("no-such-*") == []


def test_method_info_fields():
    info = camkit.method_info("gradcam")
    assert (info.name, info.distribution, info.version) == ("gradcam", "camkit", camkit.__version__)
    assert info.needs_gradients is True
    assert "grad-cam" in info.aliases
    assert info.summary and "Selvaraju" in info.paper
    assert issubclass(info.config, camkit.MethodConfig)

    cam = camkit.method_info("cam")
    assert cam.needs_gradients is False and "Zhou" in cam.paper
    schema = cam.schema()
    assert schema["properties"]["fc_layer"]["default"] is None
    assert "fc_layer" in cam.config.model_fields


@pytest.mark.parametrize("spelling", ["grad-cam", "Grad-CAM", "GRAD_CAM", "GradCam", " gradcam "])
def test_lookup_ignores_case_underscores_and_aliases(spelling):
    assert camkit.method_info(spelling).name == "gradcam"


def test_unknown_method_lists_what_is_available(tiny):
    with pytest.raises(MethodNotFoundError) as info:
        camkit.create("gradcan", tiny, "features")
    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "no CAM method named 'gradcan'" in message
    assert "Did you mean 'gradcam'" in message
    assert "Available: " in message and "cam, " in message


# -- plugins registered at run time ----------------------------------------------------------


def test_plugin_from_this_module(tiny, x32, ref):
    camkit.register_plugin(THIS_MODULE, name="test-plugin")

    assert "powered-gradcam" in camkit.list_methods("powered-*")
    info = camkit.method_info("PGCAM")
    assert (info.name, info.distribution, info.version) == (
        "powered-gradcam",
        "test-plugin",
        "runtime",
    )
    assert info.schema()["properties"]["power"]["exclusiveMinimum"] == 0
    plugins = {p.name: p for p in camkit.list_plugins()}
    assert plugins["test-plugin"].status == "ok"
    assert plugins["test-plugin"].methods == ["powered-gradcam"]

    res = camkit.create("powered-gradcam", tiny, "features", power=2.0)(x32, targets=[1, 2])

    acts, grads, _ = ref.capture(tiny, tiny.features, x32, ref.pick([1, 2]))
    layer_map = ref.weighted(grads.mean((2, 3)) ** 2, acts)
    torch.testing.assert_close(res.layer_maps["features"], layer_map, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        res.maps, ref.upsample(ref.normalize(layer_map), (32, 32)), atol=1e-5, rtol=0
    )


def test_unregister_removes_the_methods_and_aliases():
    camkit.register_plugin(THIS_MODULE, name="test-plugin")
    camkit.unregister_plugin("test-plugin")
    assert "powered-gradcam" not in camkit.list_methods()
    with pytest.raises(MethodNotFoundError):
        camkit.method_info("pgcam")
    assert "test-plugin" not in {p.name for p in camkit.list_plugins()}
    camkit.register_plugin(THIS_MODULE, name="test-plugin")  # and it can come back
    assert camkit.method_info("pgcam").name == "powered-gradcam"


def test_plugin_config_is_validated(tiny):
    camkit.register_plugin(THIS_MODULE, name="test-plugin")
    with pytest.raises(ConfigError, match=r"'powered-gradcam': power: .*greater than 0 \(got -1\)"):
        camkit.create("powered-gradcam", tiny, "features", power=-1)
    with pytest.raises(ConfigError, match=r"exponent: unknown option .*config: power"):
        camkit.create("powered-gradcam", tiny, "features", exponent=2)


@pytest.mark.parametrize(
    ("clash", "claimed"),
    [(named("gradcam"), "gradcam"), (named("grad-cam2", aliases=("Grad_CAM",)), "Grad_CAM")],
)
def test_duplicate_name_names_both_sources(clash, claimed):
    with pytest.raises(PluginError) as info:
        camkit.register_plugin(Provides(clash), name="clashing")
    message = str(info.value)
    assert f"method name {claimed!r} is claimed twice" in message
    assert "distribution 'camkit'" in message and "distribution 'clashing'" in message
    # Nothing of the clashing plugin is left behind; the built-in is untouched.
    assert camkit.method_info("gradcam").distribution == "camkit"
    assert "clashing" not in {p.name for p in camkit.list_plugins()}
    assert "grad-cam2" not in camkit.list_methods()


def test_plugin_registered_twice():
    camkit.register_plugin(THIS_MODULE, name="test-plugin")
    with pytest.raises(PluginError, match=r"'test-plugin'.*a plugin of that name is already"):
        camkit.register_plugin(Provides(named("other")), name="test-plugin")
    with pytest.raises(PluginError, match="already registered as plugin 'test-plugin'"):
        camkit.register_plugin(THIS_MODULE, name="again")
    assert "other" not in camkit.list_methods()
    assert camkit.method_info("powered-gradcam").distribution == "test-plugin"


def test_duplicate_within_one_plugin():
    with pytest.raises(PluginError, match="'twin' is claimed twice"):
        camkit.register_plugin(Provides(named("twin"), named("twin")), name="twins")
    assert "twin" not in camkit.list_methods()


@pytest.mark.parametrize(
    ("provided", "match"),
    [
        (int, "not a camkit.Method"),
        (named("Bad_Name"), "names are lower-case letters, digits and hyphens"),
        (type("NoWeights", (camkit.Method,), {"name": "no-weights"}), "neither weights"),
    ],
)
def test_invalid_method_classes(provided, match):
    with pytest.raises(PluginError, match=match):
        camkit.register_plugin(Provides(provided), name="invalid")
    assert "invalid" not in {p.name for p in camkit.list_plugins()}


def test_installed_plugin_with_an_invalid_class_is_broken_not_fatal(entry_points, tiny, x32):
    entry_points.add("invalid", lambda: Provides(named("Bad_Name")), dist="camkit-invalid")
    assert {"cam", "gradcam"} <= set(camkit.list_methods())
    invalid = {p.name: p for p in camkit.list_plugins()}["invalid"]
    assert invalid.status == "broken"
    assert "lower-case letters" in str(invalid.error)
    camkit.create("gradcam", tiny, "features")(x32)


def test_plugin_weights_of_the_wrong_shape(tiny, x32):
    class Truncated(PoweredGradCAM):
        name = "truncated"

        def weights(self, ctx: camkit.Context) -> Tensor:
            return super().weights(ctx)[:, :3]

    camkit.register_plugin(Provides(Truncated), name="truncating")
    with pytest.raises(PluginError, match=r"'truncated' returned weights of shape \(2, 3\)"):
        camkit.create("truncated", tiny, "features")(x32)


# -- entry-point plugins ---------------------------------------------------------------------


def test_entry_points_are_loaded_lazily(entry_points):
    ep = entry_points.add("powered", lambda: THIS_MODULE, dist="camkit-powered", version="1.2.3")
    assert entry_points.reads == 0 and ep.loads == 0

    assert "powered-gradcam" in camkit.list_methods()
    info = camkit.method_info("powered-gradcam")
    assert (info.distribution, info.version) == ("camkit-powered", "1.2.3")
    camkit.list_methods()
    assert entry_points.reads == 1 and ep.loads == 1


def test_broken_plugin_is_listed_and_camkit_keeps_working(entry_points, tiny, x32):
    install_broken(entry_points)

    assert {"cam", "gradcam"} <= set(camkit.list_methods())
    broken = {p.name: p for p in camkit.list_plugins()}["brokencam"]
    assert (broken.status, broken.distribution) == ("broken", "camkit-broken")
    assert isinstance(broken.error, ModuleNotFoundError)
    camkit.create("gradcam", tiny, "features")(x32)

    with pytest.raises(PluginError) as info:
        camkit.create("brokencam", tiny, "features")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert MISSING_MODULE in str(info.value.__cause__)
    assert "'brokencam'" in str(info.value) and "'camkit-broken'" in str(info.value)


def test_plugin_whose_hook_raises_is_broken(entry_points):
    class Failing:
        @camkit.hookimpl
        def camkit_methods(self) -> list[object]:
            raise RuntimeError("hook failed")

    entry_points.add("failing", Failing, dist="camkit-failing")
    status = {p.name: p for p in camkit.list_plugins()}["failing"]
    assert status.status == "broken" and str(status.error) == "hook failed"
    with pytest.raises(PluginError, match="failed to load: hook failed"):
        camkit.method_info("failing")


def test_entry_point_duplicates_name_both_distributions(entry_points, monkeypatch):
    entry_points.add("a-plugin", lambda: Provides(named("shared")), dist="camkit-a")
    entry_points.add("b-plugin", lambda: Provides(named("shared")), dist="camkit-b")
    with pytest.raises(PluginError, match=r"'camkit-a'.*'camkit-b'.*CAMKIT_DISABLE_PLUGINS"):
        camkit.list_methods()

    monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", "b-plugin")
    registry.reload()
    assert camkit.method_info("shared").distribution == "camkit-a"


@pytest.mark.parametrize("blocked", ["powered", "camkit-powered", "other,Powered"])
def test_disable_plugins_by_entry_point_or_distribution(entry_points, monkeypatch, blocked):
    ep = entry_points.add("powered", lambda: THIS_MODULE, dist="camkit-powered")
    monkeypatch.setenv("CAMKIT_DISABLE_PLUGINS", blocked)

    assert "powered-gradcam" not in camkit.list_methods()
    assert {p.name: p.status for p in camkit.list_plugins()}["powered"] == "blocked"
    assert ep.loads == 0
    with pytest.raises(MethodNotFoundError, match="CAMKIT_DISABLE_PLUGINS blocks"):
        camkit.method_info("powered")


@pytest.mark.parametrize(("value", "autoload"), [("1", False), ("yes", False), ("0", True)])
def test_no_plugin_autoload(entry_points, monkeypatch, value, autoload):
    entry_points.add("powered", lambda: THIS_MODULE, dist="camkit-powered")
    install_broken(entry_points)
    monkeypatch.setenv("CAMKIT_NO_PLUGIN_AUTOLOAD", value)

    names = camkit.list_methods()
    assert {"cam", "gradcam"} <= set(names)
    assert ("powered-gradcam" in names) is autoload
    assert (entry_points.reads == 1) is autoload
    plugins = {p.name for p in camkit.list_plugins()}
    assert plugins == ({"camkit", "powered", "brokencam"} if autoload else {"camkit"})
    # Run-time registration still works without autoload.
    if not autoload:
        camkit.register_plugin(THIS_MODULE, name="test-plugin")
        assert "powered-gradcam" in camkit.list_methods()


def test_reload_forgets_run_time_plugins():
    camkit.register_plugin(THIS_MODULE, name="test-plugin")
    registry.reload()
    assert "powered-gradcam" not in camkit.list_methods()
