"""``camkit methods`` and ``camkit plugins`` import no torch (issue 13, item 7).

That includes the explainers' table and an explainer's detail (``camkit methods dff``).

Listing methods loads every method module: the built-ins and every plugin of the ``camkit``
entry-point group. Each runs in a fresh interpreter that records who first asks for torch, so
a method module that imports torch at module level fails the test with its name. A third-party
plugin that does import torch at module level still works (camkit only lists slower).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Runs the listing commands in a fresh interpreter and prints what it saw as JSON.
PROBE = r'''
import ast, contextlib, importlib.abc, importlib.util, io, json, sys, time

class Blame(importlib.abc.MetaPathFinder):
    """Records the modules on the stack when torch is first asked for (innermost first)."""

    chain = None

    def find_spec(self, name, path=None, target=None):
        if Blame.chain is None and name.partition(".")[0] == "torch":
            frame, chain = sys._getframe(1), []
            while frame is not None:
                module = frame.f_globals.get("__name__", "?")
                if not module.startswith(("importlib", "__main__")) and module not in chain:
                    chain.append(module)
                frame = frame.f_back
            Blame.chain = chain
        return None

sys.meta_path.insert(0, Blame())
start = time.perf_counter()
from camkit.cli import main
codes, out = [], io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    for argv in (
        ["methods"],
        ["plugins"],
        ["methods", "--json"],
        ["methods", "gradcam"],
        ["methods", "--explainers", "--json"],
        *([["methods", "dff"]] if importlib.util.find_spec("camkit_contrib") else []),
    ):
        codes.append(main(argv))
seconds = time.perf_counter() - start
torch_loaded = "torch" in sys.modules

import camkit
import camkit.targets  # the contract's targets, which a method may import
contract_torch = "torch" in sys.modules
from camkit.registry import ENTRY_POINT_GROUP
import importlib.metadata as metadata

def top_level_torch(module):
    """Module-level imports of torch in ``module``'s source (TYPE_CHECKING blocks aside)."""
    path = getattr(sys.modules[module], "__file__", None)
    if not path:
        return []
    found = []
    for node in ast.parse(open(path, encoding="utf-8").read()).body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        found += [f"line {node.lineno}" for n in names if n.partition(".")[0] == "torch"]
    return found

methods = {n: camkit.method_info(n).cls.__module__ for n in camkit.list_methods()}
entry_points = [ep.value.partition(":")[0] for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
modules = sorted({
    "camkit.methods", "camkit.method", "camkit.targets", "camkit.hookspecs", "camkit.errors",
    *methods.values(), *(m for m in entry_points if m in sys.modules),
})
print(json.dumps({
    "codes": codes,
    "output": out.getvalue(),
    "seconds": seconds,
    "torch": torch_loaded,
    "contract_torch": contract_torch,
    "chain": Blame.chain,
    "methods": methods,
    "modules": modules,
    "top_level_torch": {m: top_level_torch(m) for m in modules},
    "plugins": [[p.name, p.distribution, p.status, repr(p.error)] for p in camkit.list_plugins()],
}))
'''


def probe(extra_path: Path | None = None) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CAMKIT_DISABLE_PLUGINS", "CAMKIT_NO_PLUGIN_AUTOLOAD")
    }
    # The checkout first (as pytest's pythonpath does), then the extra distribution.
    paths = [str(ROOT), *([str(extra_path)] if extra_path else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def offenders(seen: dict[str, Any]) -> list[str]:
    """What imported torch: the innermost module asking for it, and every method module with
    a module-level torch import."""
    found = [f"{m} ({', '.join(lines)})" for m, lines in seen["top_level_torch"].items() if lines]
    chain = seen["chain"]
    if chain:
        # The method module on the import stack nearest to torch is the one to fix.
        culprit = next((m for m in chain if m in seen["modules"]), chain[0])
        found.append(f"{culprit} imports it (import stack: {' <- '.join(chain)})")
    return found


def test_listing_methods_and_plugins_imports_no_torch() -> None:
    seen = probe()
    assert set(seen["codes"]) == {0}, seen["output"]
    assert [p for p in seen["plugins"] if p[2] != "ok"] == []
    # Every method module was loaded by the listing, so each was checked.
    assert "camkit.methods.gradient" in seen["modules"]
    assert set(seen["methods"].values()) <= set(seen["modules"])
    if importlib.util.find_spec("camkit_contrib") is not None:
        assert "camkit_contrib" in seen["modules"]
        assert seen["methods"]["eigencam"].startswith("camkit_contrib.")
        # Its explainer is listed and described without importing torch.
        assert "camkit_contrib.dff:DeepFeatureFactorization" in seen["output"]
        assert "call: from camkit_contrib.dff import DeepFeatureFactorization" in seen["output"]
    for module, lines in seen["top_level_torch"].items():
        assert not lines, (
            f"method module {module} imports torch at module level ({', '.join(lines)}); "
            "import it inside the functions that use it (types under `if TYPE_CHECKING:`)"
        )
    assert not seen["torch"], "`camkit methods` / `camkit plugins` imported torch: " + "; ".join(
        offenders(seen)
    )
    assert not seen["contract_torch"], "importing camkit.targets imported torch"
    print(f"listing took {seen['seconds']:.3f} s without torch")


TORCHY = '''
    """A third-party plugin that imports torch at module level."""

    import torch

    import camkit


    class TorchyGradCAM(camkit.Method):
        name = "torchy-gradcam"
        summary = "Grad-CAM from a plugin that imports torch eagerly"
        needs_gradients = True

        def weights(self, ctx):
            return torch.mean(ctx.gradients, dim=(2, 3))


    @camkit.hookimpl
    def camkit_methods():
        return [TorchyGradCAM]
'''


@pytest.fixture
def torchy_plugin(tmp_path: Path) -> Path:
    """An installed-looking distribution (a ``.dist-info`` with its entry point) on a path."""
    (tmp_path / "camkit_torchy.py").write_text(textwrap.dedent(TORCHY))
    info = tmp_path / "camkit_torchy-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: camkit-torchy\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[camkit]\ntorchy = camkit_torchy\n")
    return tmp_path


def test_the_check_names_a_plugin_that_imports_torch_at_module_level(
    torchy_plugin: Path,
) -> None:
    """The check can fail, and says where; the plugin itself still works (only slower)."""
    seen = probe(torchy_plugin)
    assert set(seen["codes"]) == {0}, seen["output"]
    assert seen["methods"]["torchy-gradcam"] == "camkit_torchy"
    assert "torchy-gradcam" in seen["output"]
    assert seen["torch"]
    assert seen["chain"][0] == "camkit_torchy"
    assert seen["top_level_torch"]["camkit_torchy"] == ["line 4"]
    assert [m for m, lines in seen["top_level_torch"].items() if lines] == ["camkit_torchy"]


def test_a_plugin_that_imports_torch_at_module_level_still_works(
    torchy_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import camkit
    from camkit.registry import registry
    from camkit.testing import tiny_inputs, tiny_model

    monkeypatch.syspath_prepend(str(torchy_plugin))
    registry.reload()
    try:
        assert camkit.method_info("torchy-gradcam").distribution == "camkit-torchy"
        model, x = tiny_model(), tiny_inputs()
        got = camkit.create("torchy-gradcam", model, "features")(x)
        expected = camkit.create("gradcam", model, "features")(x)
        torch.testing.assert_close(got.maps, expected.maps)
    finally:
        monkeypatch.undo()
        registry.reload()
