"""Installing throwaway plugin distributions for real, with pip, into the test environment.

These tests change the environment they run in (pip install, then uninstall in teardown), so
they only run where that is safe and possible: in a virtual environment where camkit itself
is installed (as nox and ``pip install -e .`` do) and pip and setuptools work offline. Anywhere
else they are skipped with the reason. ``CAMKIT_SKIP_INSTALL_TESTS=1`` skips them too.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest

from camkit.registry import registry

REPO = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "install: installs throwaway distributions with pip into the running environment",
    )


@cache
def install_unavailable() -> str | None:
    """Why installing distributions here is not possible or not safe, or ``None``."""
    if os.environ.get("CAMKIT_SKIP_INSTALL_TESTS", "") not in ("", "0"):
        return "CAMKIT_SKIP_INSTALL_TESTS is set"
    if sys.prefix == sys.base_prefix:
        return "not running in a virtual environment; refusing to pip install into it"
    prefix = Path(sys.prefix).resolve()
    # Only a camkit installed into this environment counts: metadata found on sys.path
    # elsewhere (an egg-info in a checkout) says nothing about where pip would install.
    if not any(
        Path(str(dist.locate_file(""))).resolve().is_relative_to(prefix)
        for dist in metadata.distributions(name="camkit")
    ):
        return f"camkit is not installed in this environment ({prefix}); pip install -e ."
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed, so plugin distributions cannot be built offline"
    check = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True
    )
    if check.returncode != 0:
        return f"pip is not usable: {check.stderr.strip() or check.stdout.strip()}"
    return None


def pip(*args: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def write_distribution(
    root: Path,
    name: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "1.0.0",
) -> Path:
    """A minimal setuptools project with top-level ``modules`` and ``camkit`` entry points."""
    folder = root / name
    folder.mkdir(parents=True)
    eps = "\n".join(f'"{ep}" = "{target}"' for ep, target in entry_points.items())
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "{version}"

            [tool.setuptools]
            py-modules = {sorted(modules)!r}

            [project.entry-points.camkit]
            """
        ).replace("'", '"')
        + eps
        + "\n"
    )
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return folder


def forget(modules: Sequence[str]) -> None:
    """Make the running interpreter see the environment as it now is."""
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
    registry.reload()


def copy_project(project: Path, root: Path) -> Path:
    """A clean copy of a project, so building it leaves nothing in the checkout."""
    return Path(
        shutil.copytree(
            project,
            root / project.name,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"),
        )
    )


@contextmanager
def installed(
    projects: Sequence[Path], distributions: Sequence[str], modules: Sequence[str]
) -> Iterator[None]:
    """pip install ``projects`` (offline, no dependencies); uninstall them afterwards."""
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        pip(
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--force-reinstall",
            "--quiet",
            *map(str, projects),
        )
        forget(modules)
        yield
    finally:
        pip("uninstall", "--yes", "--quiet", *distributions)
        forget(modules)


def not_installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return True
    return False


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Every test starts and ends with a registry rebuilt from the environment."""
    registry.reload()
    yield
    registry.reload()


class Installer:
    """The helpers above, handed to tests as the ``installer`` fixture."""

    repo = REPO
    write = staticmethod(write_distribution)
    installed = staticmethod(installed)
    copy = staticmethod(copy_project)
    not_installed = staticmethod(not_installed)


@pytest.fixture(scope="session")
def installer() -> type[Installer]:
    return Installer
