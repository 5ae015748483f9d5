"""Imports point one way: contract <- engine <- registry <- api <- camkit <- experiment/cli.

Methods and plugins see only the contract (plugins may also use the public face, ``camkit``).
Every ``import`` of the package and of the plugin distributions in this repository is read
with ``ast`` (function-level and ``TYPE_CHECKING`` imports included) and checked against the
layer of the importing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The plugin contract: what methods may import.
CONTRACT = {"camkit.errors", "camkit.method", "camkit.hookspecs", "camkit.targets"}
#: Layers in import order: a module may import its own layer and those before it.
LAYERS = [
    ("contract", lambda m: m in CONTRACT or m == "camkit._version"),
    ("engine", lambda m: m.startswith("camkit.engine")),
    ("registry", lambda m: m == "camkit.registry"),
    ("api", lambda m: m in API or m.startswith("camkit.metrics")),
    ("public face", lambda m: m in {"camkit", "camkit.testing"}),
    ("applications", lambda m: True),  # experiment, explainer, cli, zoo, __main__
]
#: Modules built on the engine and the registry that users call directly.
API = {"camkit.api", "camkit.viz", "camkit.tasks"}
#: Upward imports that are deferred to a call (or to first attribute access), each with why.
DEFERRED = {
    # camkit.explain is an application (it loads models); the public face names it in its
    # lazy table, so `import camkit` does not load it.
    ("camkit", "camkit.explainer"): "lazy public name",
    # SimilarityTarget.concept embeds example images with camkit.tasks.embed, imported when
    # called: the target itself (what methods see) needs nothing above the contract.
    ("camkit.targets", "camkit.tasks"): "function-level import",
}


def _layer(module: str) -> int:
    return next(i for i, (_, inside) in enumerate(LAYERS) if inside(module))


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> list[str]:
    """Every absolute name ``path`` imports (``from a import b`` is ``a.b``: a submodule, or a
    name in ``a``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _camkit_modules() -> set[str]:
    src = ROOT
    return {_module_name(p, src) for p in (ROOT / "camkit").rglob("*.py")}


def _target(name: str, modules: set[str]) -> str | None:
    """The camkit module ``name`` refers to (a module, or a name inside one)."""
    if not name.startswith("camkit"):
        return None
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _violations() -> list[str]:
    modules = _camkit_modules()
    found = []
    for path in sorted((ROOT / "camkit").rglob("*.py")):
        module = _module_name(path, ROOT)
        targets = {_target(name, modules) for name in _imports(path, module)}
        for target in sorted(t for t in targets if t is not None and t != module):
            if module.startswith("camkit.methods"):
                allowed, layer = target in CONTRACT or target.startswith("camkit.methods"), "method"
            elif module == "camkit.registry" and target.startswith("camkit.methods"):
                allowed, layer = True, "registry"  # the registry loads the built-in plugins
            else:
                allowed = _layer(target) <= _layer(module) or (module, target) in DEFERRED
                layer = LAYERS[_layer(module)][0]
            if not allowed:
                found.append(f"{module} ({layer}) imports {target}")
    return found


def test_camkit_imports_point_one_way() -> None:
    assert _violations() == []


def test_the_check_sees_a_wrong_way_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: an engine import in a method is reported."""
    real = Path.read_text
    score = ROOT / "camkit" / "methods" / "score.py"

    def with_engine_import(path: Path, *args: object, **kwargs: object) -> str:
        text = real(path, *args, **kwargs)  # type: ignore[arg-type]
        return text + "\nfrom camkit.engine.maps import resize\n" if path == score else text

    monkeypatch.setattr(Path, "read_text", with_engine_import)
    assert _violations() == ["camkit.methods.score (method) imports camkit.engine.maps"]


PLUGINS = [
    ROOT / "plugins" / "camkit-contrib" / "src" / "camkit_contrib",
    ROOT / "examples" / "plugin-example" / "camkit_plugin_example",
]


@pytest.mark.parametrize("package", PLUGINS, ids=lambda p: p.name)
def test_plugins_import_only_the_contract_and_the_public_face(package: Path) -> None:
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package.parent)
        for name in _imports(path, module):
            if name.startswith("camkit.") and not name.startswith(f"{package.name}"):
                assert _target(name, _camkit_modules()) in CONTRACT, f"{path.name}: {name}"
