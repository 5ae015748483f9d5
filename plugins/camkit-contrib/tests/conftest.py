"""Registers the ``slow`` marker, so the peer-parity tests can be deselected here too, and
pins the explained forward's layout to camkit's rule (no timing probe: exact forward counts)."""

from __future__ import annotations

import pytest

from camkit.engine.accel import layout


@pytest.fixture(autouse=True)
def layout_by_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "MEASURE", False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: heavy tests (peer-library parity); `-m 'not slow'`")
