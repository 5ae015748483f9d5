"""``torchrun --nproc-per-node 2 -m camkit run``: the same results as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from camkit.experiment import load_config, run

ROOT = Path(__file__).resolve().parents[2]

# a shapes-cnn that kills its process part-way through when RANK equals DIE_RANK: after the
# first-image check (5 forwards per method) and its first shard of cam (5 more)
DYING_MODEL = """
import os
from camkit import zoo
from camkit.zoo.model import ShapesCNN

class Dying(ShapesCNN):
    calls = 0

    def forward(self, x):
        Dying.calls += 1
        if os.environ.get("RANK") == os.environ.get("DIE_RANK") and Dying.calls > 16:
            os._exit(3)
        return super().forward(x)

def build():
    model = Dying()
    model.load_state_dict(zoo.load_model("shapes-cnn").state_dict())
    return model
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(config: Path, output: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        **env,
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        "-m", "camkit", "run", str(config), "--output", str(output), "--quiet",
    ]  # fmt: skip
    return subprocess.run(command, env=environment, cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def one_process(small_config, tmp_path) -> Path:
    """The small experiment run in this process with one thread, as torchrun's workers."""
    out = tmp_path / "one"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # equal threads, equal float rounding
    try:
        run(load_config(small_config, output=out), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_two_gloo_processes_write_what_one_process_writes(small_config, one_process, tmp_path):
    two = tmp_path / "two"
    done = _torchrun(small_config, two, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (two / "metrics.csv").read_bytes() == (one_process / "metrics.csv").read_bytes()
    summaries = [json.loads((d / "summary.json").read_text()) for d in (one_process, two)]
    for key in ("methods", "baselines", "images", "model_accuracy"):
        assert summaries[0][key] == summaries[1][key]
    assert summaries[1]["run"]["processes"] == 2
    assert done.stdout.count("images,") == 1  # one line, from rank 0


@pytest.mark.slow
def test_a_dead_rank_loses_only_its_unfinished_shard(small_config, one_process, tmp_path):
    (tmp_path / "dying.py").write_text(DYING_MODEL)
    config = tmp_path / "dying.toml"
    config.write_text(
        small_config.read_text().replace(
            "[data]", '[model]\nsource = "python:dying.py:build"\n\n[data]'
        )
    )
    out = tmp_path / "two"
    died = _torchrun(config, out, tmp_path, DIE_RANK="1")
    assert died.returncode != 0
    assert (out / "maps" / "cam" / "shard-00001.npz").exists()  # rank 1's first shard
    assert not (out / "maps" / "gradcam" / "shard-00001.npz").exists()
    assert not (out / "metrics.csv").exists()
    resumed = _torchrun(config, out, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "metrics.csv").read_bytes() == (one_process / "metrics.csv").read_bytes()
