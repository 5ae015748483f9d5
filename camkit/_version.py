"""camkit's version, from the installed distribution's metadata.

A source tree used without installing it (``PYTHONPATH=.``) has no metadata: its version is
read from its ``pyproject.toml`` instead.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path


def _version() -> str:
    try:
        return metadata.version("camkit")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
        match = re.search(r'^version\s*=\s*"([^"]+)"', text, flags=re.MULTILINE)
        return match.group(1) if match else "0+unknown"


__version__ = _version()
