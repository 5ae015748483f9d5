"""``torchrun --nproc-per-node 2 -m camkit run``: the same results as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from camkit.experiment import load_config, run

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_processes_write_what_one_process_writes(small_config, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers: equal threads, equal float rounding
    try:
        run(load_config(small_config, output=one), progress=False)
    finally:
        torch.set_num_threads(threads)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",  # loopback only
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
        "-m", "camkit", "run", str(small_config), "--output", str(two), "--quiet",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (two / "metrics.csv").read_bytes() == (one / "metrics.csv").read_bytes()
    summaries = [json.loads((d / "summary.json").read_text()) for d in (one, two)]
    for key in ("methods", "baselines", "images", "model_accuracy"):
        assert summaries[0][key] == summaries[1][key]
    assert summaries[1]["run"]["processes"] == 2
    # one line from rank 0 only
    assert done.stdout.count("images,") == 1
