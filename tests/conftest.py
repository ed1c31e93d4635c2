"""Shared fixtures: every test gets its own data root, never the developer's `.robocurate/`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Headless MuJoCo rendering for the simulated cameras: mujoco reads MUJOCO_GL once, when first imported, and a
# test module may import it before the simulator package (which sets the same default).
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "0")


@pytest.fixture(autouse=True)
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "robocurate-home"
    monkeypatch.setenv("ROBOCURATE_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def smollm2_dir(pytestconfig, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from GGUF, kept in pytest's cache so later runs skip the ~30 s."""
    from quality.llm_backends import smollm2_model_dir

    cache = getattr(pytestconfig, "cache", None)
    root = cache.mkdir("robocurate-smollm2") if cache is not None else tmp_path_factory.mktemp("smollm2")
    return smollm2_model_dir(cache_dir=Path(root))


@pytest.fixture
def instance(tmp_path, monkeypatch, data_root):
    """A Dagster instance of the test's own (SQLite under tmp_path), with the repo's dagster.yaml."""
    import dagster as dg

    from pipelines.runner import dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home()
    with dg.DagsterInstance.get() as inst:
        yield inst
