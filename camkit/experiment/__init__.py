"""Config-file driven experiments: ``camkit run experiment.toml``.

>>> from camkit.experiment import load_config, run
>>> config = load_config("examples/quickstart.toml", overrides=["data.count=8"])
>>> result = run(config)  # maps/, overlays/, metrics.csv, summary.json, report.html
"""

from __future__ import annotations

from camkit.experiment.config import ExperimentConfig, load_config, validate
from camkit.experiment.runner import RunResult, merge, plan_shards, run

__all__ = [
    "ExperimentConfig",
    "RunResult",
    "load_config",
    "merge",
    "plan_shards",
    "run",
    "validate",
]
