"""Gates that hold: staged rows reach publishing only after the blocking checks pass, and the
conservation count comes from the files on disk. Real Dagster runs on a small simulated fleet."""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from foundations import landing, storage
from foundations.publish import list_versions
from pipelines.runner import run_job
from quality.conservation import account_for_files, landed_files

SOURCE = "ant_fleet_ros2"
STAGED = dg.AssetKey("staged_validation")
GATED = dg.AssetSelection.assets("validated_episodes", "quarantine")
# Up to staging, without the gates: lets a test change the staged files before the gates read them.
stage_job = dg.define_asset_job("stage_only", selection=dg.AssetSelection.assets("raw_log_files", "episodes", STAGED).without_checks())
# The gates and promotion (and, with downstream, everything that reads promoted rows).
gate_job = dg.define_asset_job("gate_only", selection=GATED)
gate_and_downstream_job = dg.define_asset_job(
    "gate_and_downstream", selection=GATED | dg.AssetSelection.assets("episode_scores", "referee_rewards")
)

# The curated recipe keeps few episodes of a 4-episode fleet; the full one is the published state here.
publish_one_job = dg.define_asset_job("publish_ant_skills", selection=dg.AssetSelection.assets(["hub", "ant_skills"]))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    from simulator.embodiments import get_embodiment

    out = tmp_path_factory.mktemp("fleet")
    get_embodiment("ant").simulate_fleet(4, out, seed=11, fault_rate=0.25, episode_steps=60)
    return out


@pytest.fixture
def defs():
    from pipelines.definitions import defs as base

    return dg.Definitions.merge(base, dg.Definitions(jobs=[stage_job, gate_job, gate_and_downstream_job, publish_one_job]))


def _land(fleet: Path, instance, batch: str) -> str:
    key = landing.land(sorted(fleet.glob("*.mcap")), SOURCE, batch)
    instance.add_dynamic_partitions("landing_batch", [key])
    return key


def _run(defs, instance, job: str, key: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=key, raise_on_error=False)


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _bytes(table: str, key: str) -> bytes:
    return storage.partition_path(table, key).read_bytes()


def test_a_failed_expectation_promotes_and_publishes_nothing(fleet, instance, defs, smollm2_dir):
    referee = {"referee": {"model_dir": str(smollm2_dir), "segment_steps": 50}}
    key = _land(fleet, instance, "b1")
    run_job(defs, instance, "ingest_job", partition_key=key, resources=referee)
    accepted = storage.read_partition("validated_episodes", key)
    assert accepted.height > 0
    # Promotion copies the staged partition that passed the gates, byte for byte.
    assert _bytes("validated_episodes", key) == _bytes(storage.staged("validated_episodes"), key)
    run_job(defs, instance, "publish_ant_skills")
    versions = [v["version"] for v in list_versions("ant_skills")]
    assert versions == ["1.0.0"]
    promoted = {t: _bytes(t, key) for t in ("validated_episodes", "quarantine")}
    scores = _bytes("episode_scores", key)

    # Stage again, then break one staged row the way a faulty writer would: an action far out of bounds.
    assert _run(defs, instance, "stage_only", key).success
    staged = storage.read_partition(storage.staged("validated_episodes"), key)
    first = staged["episode_id"][0]
    bad = staged.with_columns(
        pl.when((pl.col("episode_id") == first) & (pl.col("step") == 5))
        .then(pl.col("action").list.eval(pl.element() * 0 + 99.0))
        .otherwise(pl.col("action")).alias("action")
    )
    storage.stage_partition(bad, "validated_episodes", key)

    result = _run(defs, instance, "gate_and_downstream", key)
    assert not result.success
    checks = _evaluations(result)
    assert not checks["expectations_pass"].passed
    assert "action_bounds" in checks["expectations_pass"].metadata["failed_expectations"].value
    assert checks["every_file_accounted_for"].passed  # the count is right; the content is not
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not materialized & {"validated_episodes", "quarantine", "episode_scores", "referee_rewards"}
    # The previous good state stays published, untouched.
    assert {t: _bytes(t, key) for t in promoted} == promoted
    assert _bytes("episode_scores", key) == scores
    assert not (storage.read_table("validated_episodes")["action"].list.max() > 1.0).any()

    run_job(defs, instance, "publish_ant_skills")
    assert [v["version"] for v in list_versions("ant_skills")] == versions


def test_conservation_is_counted_from_the_files_on_disk(fleet, instance, defs):
    key = _land(fleet, instance, "b1")
    assert _run(defs, instance, "stage_only", key).success
    first = _run(defs, instance, "gate_only", key)
    assert first.success, _evaluations(first)
    promoted = {t: _bytes(t, key) for t in ("validated_episodes", "quarantine")}
    root = landing.batch_dir(key)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.mcap"))
    assert len(files) == 4

    # An extra file nobody ingested (same bytes as a landed one, another name) is named.
    extra = root / "late" / "extra.mcap"
    extra.parent.mkdir()
    shutil.copyfile(root / files[0], extra)
    result = _run(defs, instance, "gate_only", key)
    check = _evaluations(result)["every_file_accounted_for"]
    assert not result.success and not check.passed
    assert "missing: late/extra.mcap" in check.description
    extra.unlink()

    # A landed file deleted after ingest: its outcome rows name a file that is not on disk.
    gone = root / files[1]
    kept = gone.read_bytes()
    gone.unlink()
    result = _run(defs, instance, "gate_only", key)
    check = _evaluations(result)["every_file_accounted_for"]
    assert not result.success and f"extra: {files[1]}" in check.description
    assert {t: _bytes(t, key) for t in promoted} == promoted  # nothing promoted by failed gates

    # Put back byte for byte: the count holds again.
    gone.write_bytes(kept)
    assert _run(defs, instance, "gate_only", key).success

    # The same count over the real tables, changed the ways a faulty stage could change them.
    tables = {t: storage.read_partition(t, key) for t in ("raw_log_files", "episodes")}
    accepted = storage.read_partition("validated_episodes", key)
    quarantine = storage.read_partition("quarantine", key)
    landed = landed_files(root, "*.mcap")

    def problems(acc: pl.DataFrame, quar: pl.DataFrame) -> list[str]:
        return account_for_files(landed, tables["raw_log_files"], tables["episodes"], acc, quar)[1]["problem"].to_list()

    outcomes, ok = account_for_files(landed, tables["raw_log_files"], tables["episodes"], accepted, quarantine)
    assert ok.is_empty() and set(outcomes["file"]) == set(files)
    assert set(outcomes["outcome"]) <= {"episodes", "rejected"}

    episode = accepted["episode_id"][0]
    lineage = accepted.filter(pl.col("episode_id") == episode).select("episode_id", "source", "source_file", "source_sha256").head(1)
    both = pl.concat([quarantine, lineage.with_columns(pl.lit("validation").alias("stage"), pl.lit("x").alias("check"),
                                                       pl.lit("x").alias("reason"))], how="diagonal_relaxed")
    assert any(p.startswith(f"doubled: episode {episode}") for p in problems(accepted, both))
    twice = pl.concat([accepted, accepted.filter(pl.col("episode_id") == episode)])
    assert any(p.startswith(f"doubled: accepted episode {episode}") for p in problems(twice, quarantine))
    dropped = accepted.filter(pl.col("episode_id") != episode)
    assert any(p.startswith(f"missing: episode {episode}") for p in problems(dropped, quarantine))
    # A scan that calls a first delivery a duplicate would hide it from parsing: named too.
    raw = tables["raw_log_files"].with_columns(
        pl.when(pl.col("file") == files[0]).then(pl.lit("duplicate")).otherwise(pl.col("status")).alias("status"))
    found = account_for_files(landed, raw, tables["episodes"], accepted, quarantine)[1]["problem"].to_list()
    assert any(p.startswith(f"missing: {files[0]}") and "not delivered before" in p for p in found)
