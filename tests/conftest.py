"""Shared fixtures: every test gets its own data root, never the developer's `.robocurate/`."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "robocurate-home"
    monkeypatch.setenv("ROBOCURATE_HOME", str(root))
    return root
