"""Development tasks: `nox -s tests lint typecheck`, `nox -s matrix`, `nox -s bench`.

Sessions install camkit into their own virtualenv; `nox -R` reuses it without reinstalling
torch.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
# Tests run many tiny models, where torch's intra-op threads cost more than they bring.
TEST_ENV = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The fast test suite (the heavy architecture matrix is `nox -s matrix`); with timm, so
    its model sources and auto layers are tested, Hugging Face transformers (auto layers of its
    classifiers), camkit-contrib, whose methods the experiment examples use, and the two peer
    libraries the compat shims are compared with."""
    session.install("-e", ".[test,timm,hf-test,compat-test]")
    session.install("./plugins/camkit-contrib")
    session.run("pytest", "-m", "not slow", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Every method on every architecture of the matrix (slow), contrib's methods included."""
    session.install("-e", ".[test,timm,compat-test]")
    session.install("./plugins/camkit-contrib")
    session.run("pytest", "-m", "slow", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.5")
    paths = ["camkit", "tests", "plugins", "examples", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the camkit package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests, not installed): ratios against the bare model, Markdown and JSON.

    `benchmarks/` runs from the repository root; e.g. `nox -s bench -- --quick`.
    `nox -s bench -- --peers [--quick]` times the compat shims against torchcam and
    pytorch-grad-cam, installed for it with camkit-contrib (Eigen-CAM, Ablation-CAM).
    """
    if "--peers" in session.posargs:
        session.install("-e", ".[compat-test]")
        session.install("./plugins/camkit-contrib")
    else:
        session.install("-e", ".")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def contrib(session: nox.Session) -> None:
    """The camkit-contrib plugin distribution's own tests, installed the way users install it."""
    session.install("-e", ".[test]")
    session.install("./plugins/camkit-contrib")
    session.run("pytest", "plugins/camkit-contrib/tests", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """The quickstart's report.html in headless Chromium (tests/browser): fails on console
    errors, failed or external requests, broken images, sideways scrolling at 390 px or a
    missing plot; screenshots in build/report-check/screenshots."""
    import shutil

    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        session.skip(
            f"{' and '.join(missing)} not found: the report's browser test needs Node.js 18+ "
            "(it installs headless Chromium from npm); install Node.js to run it"
        )
    session.install("-e", ".")
    root = os.path.abspath("build/report-check")
    folder = os.path.join(root, "run")
    session.run(
        "python", "-m", "camkit", "run", "examples/quickstart.toml", "--output", folder,
        "--overwrite", "--quiet", env=TEST_ENV,
    )  # fmt: skip
    with session.chdir("tests/browser"):
        session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
        screenshots = os.path.join(root, "screenshots")
        session.run("node", "check_report.mjs", folder, screenshots, external=True)
