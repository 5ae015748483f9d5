"""docs/plugins.md walks through examples/plugin-example: its code blocks must be the files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugin-example"


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "camkit_plugin_example/__init__.py", "tests/test_gradcam_topk.py"],
)
def test_the_walkthrough_shows_the_example_files_verbatim(path):
    blocks = code_blocks((REPO / "docs" / "plugins.md").read_text())
    assert (EXAMPLE / path).read_text() in blocks
