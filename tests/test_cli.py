"""The ``camkit`` command line."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import camkit
from camkit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: camkit")
    assert "methods" in out and "plugins" in out


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and out.startswith("usage: camkit")


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"camkit {camkit.__version__}"


def test_methods_table(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    # The methods' table; other explainers (tests/test_explainers.py) follow a blank line.
    lines = out.partition("\n\n")[0].splitlines()
    assert lines[0].split() == ["name", "needs", "source", "distribution", "summary"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(camkit.list_methods())
    assert rows["gradcam"][1:6] == ["gradients", "Selvaraju", "2017", "camkit", camkit.__version__]
    assert rows["cam"][1:4] == ["activations", "Zhou", "2016"]
    assert rows["scorecam"][1] == "forwards"
    assert rows["smoothgradcampp"][1] == "gradients+forwards"


@pytest.mark.parametrize(
    ("paper", "source"),
    [
        ("Selvaraju et al., Grad-CAM: Visual Explanations, ICCV 2017", "Selvaraju 2017"),
        (
            "A variant of Eigen-CAM: Muhammad & Yeasin, Eigen-CAM, IJCNN 2020",
            "Muhammad & Yeasin 2020",
        ),
        ("How to Evaluate and Refine your CAM, arXiv:2605.14641, 2026", "arXiv 2026"),
        ("A Title Without Any Authors Named, 2026", "- 2026"),
        ("", "-"),
    ],
)
def test_source_column_names_authors_or_the_venue(paper, source):
    from camkit.cli import _source

    assert _source(paper) == source


def test_methods_needs_column_names_vit_attention(capsys):
    class AttentionMethod(camkit.Method):
        name = "attention-probe"
        needs_gradients = True
        needs_attention = True

        def weights(self, ctx):
            raise AssertionError("not called")

    from camkit.cli import _needs
    from camkit.registry import Registry

    info = Registry()._info(AttentionMethod, "probe", "0")
    assert _needs(info) == "gradients+vit-attention"
    assert info.needs_attention is True


def test_methods_pattern(capsys):
    code, out, _ = run(capsys, "methods", "*grad*")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == camkit.list_methods("*grad*")


@pytest.mark.parametrize("spelling", ["gradcam", "grad-cam", "Grad_CAM"])
def test_method_detail(capsys, spelling):
    code, out, _ = run(capsys, "methods", spelling)
    assert code == 0
    assert out.splitlines()[0] == f"gradcam (camkit {camkit.__version__})"
    assert "paper: Selvaraju" in out
    assert "aliases: grad-cam" in out
    assert "needs gradients: yes" in out
    assert "forward passes: one\n" in out


def test_method_detail_shows_the_config(capsys):
    code, out, _ = run(capsys, "methods", "cam")
    assert code == 0
    assert "fc_layer: str | None = None" in out


def test_methods_json(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0
    data = json.loads(out)
    assert [d["name"] for d in data] == camkit.list_methods()
    gradcam = next(d for d in data if d["name"] == "gradcam")
    assert gradcam["needs_gradients"] is True and gradcam["needs"] == "gradients"
    sscam = next(d for d in data if d["name"] == "sscam")
    assert sscam["many_forwards"] is True and sscam["needs"] == "forwards"
    assert gradcam["distribution"] == "camkit" and gradcam["version"] == camkit.__version__
    assert gradcam["aliases"] == ["grad-cam"]
    cam = next(d for d in data if d["name"] == "cam")
    assert cam["config"] == camkit.method_info("cam").schema()


def test_method_detail_json(capsys):
    code, out, _ = run(capsys, "methods", "cam", "--json")
    assert code == 0
    assert json.loads(out)["config"]["properties"]["fc_layer"]["default"] is None


def test_unknown_method(capsys):
    code, out, err = run(capsys, "methods", "gradcan")
    assert code != 0 and out == ""
    assert "no CAM method named 'gradcan'" in err and "Did you mean 'gradcam'" in err


def test_pattern_matching_nothing(capsys):
    code, _, err = run(capsys, "methods", "zz*")
    assert code != 0
    assert "no method matches 'zz*'" in err


def test_plugins(capsys, entry_points):
    entry_points.add(
        "brokencam",
        lambda: importlib.import_module("camkit_test_plugin_that_is_not_installed"),
        dist="camkit-broken",
        version="0.3",
    )
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["camkit"].split()[1:4] == ["camkit", camkit.__version__, "ok"]
    assert "gradcam" in lines["camkit"]
    assert lines["brokencam"].split()[1:4] == ["camkit-broken", "0.3", "broken"]
    assert "ModuleNotFoundError" in lines["brokencam"]

    code, out, _ = run(capsys, "plugins", "--json")
    data = {p["name"]: p for p in json.loads(out)}
    assert data["brokencam"]["status"] == "broken"
    assert "camkit_test_plugin_that_is_not_installed" in data["brokencam"]["error"]
    assert set(camkit.list_methods()) == set(data["camkit"]["methods"])


def test_python_dash_m_camkit():
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CAMKIT_NO_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "camkit", "methods"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()[1:]]
    assert {"cam", "gradcam"} <= set(names)


def _python(*code: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, "-c", "\n".join(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"], []])
def test_version_and_help_do_not_import_torch(argv):
    proc = _python(
        "import sys",
        "from camkit.cli import main",
        "try:",
        f"    main({argv!r})",
        "except SystemExit:",
        "    pass",
        "print('torch' in sys.modules, 'camkit.engine' in sys.modules)",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False False"


def test_import_camkit_is_lazy_and_complete():
    proc = _python(
        "import sys, camkit",
        "before = 'torch' in sys.modules",
        "missing = [n for n in camkit.__all__ if getattr(camkit, n, None) is None]",
        "print(before, missing, callable(camkit.explain))",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False [] True"


class _Raising:
    """A command that raises ``error``; set as the ``methods`` command's function."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, args: object) -> int:
        raise self.error


class _EnvironmentProblem(camkit.errors.CamkitError):
    exit_code = 1


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (
            camkit.errors.ConfigError("data.count: expected an int"),
            2,
            "data.count: expected an int",
        ),
        (_EnvironmentProblem("no network"), 1, "no network"),
        (
            OSError(28, "No space left on device", "out/maps/a.png"),
            1,
            "No space left on device: 'out/maps/a.png'",
        ),
        (PermissionError(13, "Permission denied", "/root/x"), 1, "Permission denied: '/root/x'"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_errors_end_in_one_line(capsys, monkeypatch, error, code, line):
    monkeypatch.setattr("camkit.cli._methods", _Raising(error))
    assert main(["methods"]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"camkit: error: {line}\n"


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    # `camkit methods | head`: the reader closes the pipe before camkit is done writing
    monkeypatch.setattr("camkit.cli._methods", _Raising(BrokenPipeError(32, "Broken pipe")))
    assert main(["methods"]) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [["--debug", "methods"], ["methods", "--debug"]])
def test_debug_shows_the_traceback(capsys, monkeypatch, argv):
    monkeypatch.setattr("camkit.cli._methods", _Raising(camkit.errors.ConfigError("bad key")))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert err.endswith("camkit: error: bad key\n")


def test_multi_line_messages_are_indented(capsys, monkeypatch):
    error = camkit.errors.ConfigError("2 problems:\na: bad\nb: bad")
    monkeypatch.setattr("camkit.cli._methods", _Raising(error))
    assert main(["methods"]) == 2
    assert capsys.readouterr().err == "camkit: error: 2 problems:\n  a: bad\n  b: bad\n"
