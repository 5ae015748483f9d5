"""Registers the ``slow`` marker, so the peer-parity tests can be deselected here too."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: heavy tests (peer-library parity); `-m 'not slow'`")
