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
    """The fast test suite (the heavy architecture matrix is `nox -s matrix`)."""
    session.install("-e", ".[test,compat-test]")
    session.run("pytest", "-m", "not slow", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def matrix(session: nox.Session) -> None:
    """Every method on every architecture of the matrix (slow), contrib's methods included."""
    session.install("-e", ".[test,compat-test]")
    session.install("./plugins/camkit-contrib")
    session.run("pytest", "-m", "slow", *session.posargs, env=TEST_ENV)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "camkit", "tests", "plugins", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "camkit", "tests", "plugins", "examples", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy on the camkit package."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): latency ratios against the bare model, as Markdown and JSON."""
    session.install("-e", ".")
    session.run("python", "-m", "camkit.bench", *session.posargs)


@nox.session(python=PYTHON)
def contrib(session: nox.Session) -> None:
    """The camkit-contrib plugin distribution's own tests, installed the way users install it."""
    session.install("-e", ".[test]")
    session.install("./plugins/camkit-contrib")
    session.run("pytest", "plugins/camkit-contrib/tests", *session.posargs, env=TEST_ENV)
