"""docs/tasks.md's examples run as written: every fenced ``python`` block, in its own
namespace (each is self-contained)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)


def test_every_task_has_an_example() -> None:
    assert len(BLOCKS) == 5


@pytest.mark.parametrize(
    "code", BLOCKS, ids=["detection", "segmentation", "labels", "embedding", "single-stage"]
)
def test_example_runs(code: str) -> None:
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_tasks"})
