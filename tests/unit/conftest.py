"""Unit tests are pure: the REPLICATOR_* settings of the shell that runs them (a stack moved to
other ports, say) must not reach the settings they build."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("REPLICATOR_")]:
        monkeypatch.delenv(name)
