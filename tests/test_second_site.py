"""Logs the authors did not write: a second site's Ant fleet, described by a mapping written from the docs.

Other topic names and types (PoseStamped + TwistStamped, no Odometry), other rates, one folder per
robot with file names that repeat across robots, joint order per robot, and streams that start
after the first command and stop before the last. The mapping is tests/catalog_site_b/ant_site_b.yaml.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from foundations import landing, storage
from pipelines.cli import main
from pipelines.runner import dagster_home, ingest_pending

REPO = Path(__file__).resolve().parents[1]
SOURCE = "ant_site_b"


@pytest.fixture
def site_b(tmp_path, monkeypatch) -> Path:
    catalog = tmp_path / "catalog"
    shutil.copytree(REPO / "datasets", catalog)
    shutil.copy(REPO / "tests" / "catalog_site_b" / f"{SOURCE}.yaml", catalog / "sources")
    monkeypatch.setenv("ROBOCURATE_RECIPES", str(catalog))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    from simulator.fleet import simulate_fleet

    out = tmp_path / "site_b_logs"
    simulate_fleet(24, out, seed=5, fault_rate=0.25, episode_steps=100, layout="second_site")
    return out


def test_second_site_clean_episodes_accepted_faults_quarantined_files_accounted_for(site_b, smollm2_dir, capsys):
    truth = pl.read_ndjson(site_b / "ground_truth.jsonl")
    assert truth["file"].str.contains("/").all() and truth["file"].str.split("/").list.last().is_duplicated().any()

    key = landing.land([site_b], SOURCE, "site-b-0001")  # the folder, with its robot sub-folders
    dagster_home()
    assert ingest_pending(progress=False, resources={"referee": {"model_dir": str(smollm2_dir), "segment_steps": 100}}) == [key]

    assert main(["status", "--json"]) == 0
    status = pl.DataFrame(json.loads(capsys.readouterr().out))
    # Every landed file is accounted for, under its path in the batch (names repeat across robots).
    assert sorted(status["file"]) == sorted(truth["file"])
    assert set(status["outcome"]) <= {"accepted", "quarantined", "unreadable"}
    episodes = status.select(pl.col("episodes").explode()).unnest("episodes").drop_nulls("episode_id")
    assert (episodes["trimmed_start_steps"].fill_null(0) > 0).any()  # the trims show per episode

    joined = truth.join(status.select("file", "outcome", "episodes", "reasons"), on="file")
    clean = joined.filter(pl.col("fault").is_null())
    accepted = clean.filter(pl.col("outcome") == "accepted").height
    assert accepted >= 0.95 * clean.height, clean.filter(pl.col("outcome") != "accepted").to_dicts()

    faulty = joined.filter(pl.col("fault").is_not_null())
    assert faulty.height >= 4
    for row in faulty.iter_rows(named=True):
        assert row["outcome"] in ("quarantined", "unreadable"), row
        reasons = row["reasons"] + [r for ep in row["episodes"] for r in ep["reasons"]]
        assert reasons and all(len(r) > 20 for r in reasons), row

    # The start-up steps before every stream delivered were trimmed and recorded, not rejected.
    trims = storage.read_partition("ingest_trims", key)
    assert (trims["trimmed_start_steps"] > 0).any() and trims["start_stream"].drop_nulls().len() > 0
    # The robot id comes from the site's metadata record, per robot folder.
    rows = storage.read_partition("validated_episodes", key)
    by_file = rows.group_by("source_file").agg(pl.col("robot_id").first())
    assert by_file.height == rows["episode_id"].n_unique()
    assert (by_file["robot_id"] != "").all() and by_file["robot_id"].n_unique() > 1
    from pipelines.batches import pending_batches

    with dg.DagsterInstance.get() as instance:  # nothing left to do: the batch's fingerprint is recorded
        assert pending_batches(instance) == []
        # Editing the mapping (or its robot profile) makes the batch pending again: it will be re-ingested.
        mapping = Path(os.environ["ROBOCURATE_RECIPES"]) / "sources" / f"{SOURCE}.yaml"
        mapping.write_text(mapping.read_text().replace("tolerance_s: 0.06", "tolerance_s: 0.07"))
        assert pending_batches(instance) == [key]
