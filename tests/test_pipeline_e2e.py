"""The whole data half as Dagster runs it: a small simulated fleet from landing to a published version."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import datasets
import numpy as np
import polars as pl
import pytest

from foundations import landing, storage
from foundations.targets import load_target
from foundations.recipes import load_recipe
from pipelines.batches import pending_batches
from pipelines.runner import run_job

SOURCE = "ant_fleet_ros2"

N_EPISODES = 12


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Path:
    """One simulated fleet shared by the tests of this module (simulation is the slow part)."""
    from simulator.fleet import simulate_fleet

    out = tmp_path_factory.mktemp("fleet")
    simulate_fleet(N_EPISODES, out, seed=7, fault_rate=0.4, episode_steps=100)
    return out


def _truth(fleet: Path) -> pl.DataFrame:
    return pl.read_ndjson(fleet / "ground_truth.jsonl")


@pytest.fixture
def referee(smollm2_dir) -> dict:
    """The real SmolLM2 referee, with long segments to keep the test short."""
    return {"referee": {"model_dir": str(smollm2_dir), "segment_steps": 50}}


def _ingest(defs, instance, batch: str, referee: dict) -> None:
    instance.add_dynamic_partitions("landing_batch", [batch])
    run_job(defs, instance, "ingest_job", partition_key=batch, resources=referee)


def test_definitions_are_loadable():
    from pipelines import definitions

    dg.Definitions.validate_loadable(definitions.defs)
    job_names = {j.name for j in definitions.defs.jobs}
    assert {"ingest_job", "curate_job", "publish_job"} <= job_names


def test_fleet_to_published_dataset(fleet, instance, referee):
    from pipelines.definitions import defs

    batch = landing.land(sorted(fleet.glob("*.mcap")), SOURCE, "batch-a")
    assert batch == f"{SOURCE}/batch-a"
    assert pending_batches(instance) == [batch]
    _ingest(defs, instance, batch, referee)
    assert pending_batches(instance) == []

    truth = _truth(fleet)
    episodes = storage.read_table("episodes")
    accepted = storage.read_table("validated_episodes")
    quarantine = storage.read_table("quarantine")

    # Invariant: every ingested episode is accepted or quarantined, never both.
    ingested = set(episodes["episode_id"])
    ok = set(accepted["episode_id"])
    rejected = set(quarantine["episode_id"].drop_nulls())
    assert ingested == ok | rejected and not ok & rejected

    # Every file is accounted for: parsed into episodes or quarantined as a whole file.
    parsed_files = {Path(f).name for f in episodes["source_file"]}
    unreadable = {Path(f).name for f in quarantine.filter(pl.col("episode_id").is_null())["source_file"]}
    assert parsed_files | unreadable == set(truth["file"]) and not parsed_files & unreadable

    # Planted faults never reach the accepted table; each comes with a readable reason.
    faulty = set(truth.filter(pl.col("fault").is_not_null() & (pl.col("fault") != "truncated"))["file"])
    assert faulty, "the fixture must plant faults"
    accepted_files = {Path(f).name for f in accepted["source_file"]}
    assert not faulty & accepted_files
    # A file cut short while recording keeps its readable part, as an episode marked truncated (never terminal).
    cut = set(truth.filter(pl.col("fault") == "truncated")["file"])
    trims = storage.read_table("ingest_trims")
    kept_cut = accepted.filter(pl.col("source_file").is_in(list(cut)))
    assert set(kept_cut["episode_id"]) <= set(trims.filter(pl.col("truncated"))["episode_id"])
    assert not kept_cut["is_terminal"].any()
    assert quarantine["reason"].str.len_chars().min() > 20

    scores = storage.read_table("episode_scores")
    assert set(scores["episode_id"]) == ok
    assert scores["quality_score"].is_between(0, 1).all()

    run_job(defs, instance, "publish_job")
    from foundations.publish import list_versions

    versions = list_versions("ant_skills")
    assert [v["version"] for v in versions] == ["1.0.0"]
    threshold = load_recipe("ant_skills_curated").filters.min_quality_score
    curated = storage.read_table("episode_scores").filter(pl.col("quality_score") >= threshold)
    if curated.height:  # the curated recipe keeps exactly the high scorers
        rows = datasets.load_dataset(str(list_versions("ant_skills_curated")[-1]["path"]))
        assert set().union(*(set(split["episode_id"]) for split in rows.values())) == set(curated["episode_id"])
    loaded = datasets.load_dataset(str(versions[0]["path"]))
    n_rows = sum(len(split) for split in loaded.values())
    assert n_rows == accepted.height
    assert {"observation.state", "action", "episode_id", "quality_score", "referee_reward", "combined_reward"} <= set(
        loaded["train"].column_names
    )
    # The referee judged every accepted episode; rewards are bounded per step.
    rewards = storage.read_table("referee_rewards")
    assert set(rewards["episode_id"]) == ok
    assert rewards["referee_reward"].drop_nulls().abs().max() <= 1.0

    # Nothing new: a second publish creates no version.
    run_job(defs, instance, "publish_job")
    assert len(list_versions("ant_skills")) == 1

    # A re-delivered identical file in a new batch is recognised and not parsed again.
    again = landing.land([sorted(fleet.glob("*.mcap"))[0]], SOURCE, "batch-b")
    _ingest(defs, instance, again, referee)
    raw = storage.read_partition("raw_log_files", again)
    assert raw["status"].to_list() == ["duplicate"]
    assert storage.read_partition("episodes", again).is_empty()
    run_job(defs, instance, "publish_job")
    assert len(list_versions("ant_skills")) == 1


def test_landing_sensor_registers_new_batches(fleet, instance):
    from pipelines.definitions import defs
    from pipelines.sensors import landing_sensor

    key = landing.land(sorted(fleet.glob("*.mcap"))[:2], SOURCE, "batch-s")
    (landing.landing_dir() / "no_such_source" / "b1").mkdir(parents=True)  # a folder without a mapping
    with dg.build_sensor_context(instance=instance, definitions=defs) as ctx:
        result = landing_sensor(ctx)
    assert [r.partition_key for r in result.run_requests] == [key]
    assert result.dynamic_partitions_requests[0].partition_keys == [key]


def test_training_and_evaluation_assets(fleet, instance, referee):
    """The learning half on the published data: IQL with the real MiniLM LoRA-MoE, BC, closed-loop scores."""
    from pipelines.definitions import defs
    from training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint

    batch = landing.land(sorted(fleet.glob("*.mcap")), SOURCE, "batch-t")
    _ingest(defs, instance, batch, referee)
    run_job(defs, instance, "publish_job")
    # The small test fleet leaves few episodes above the curated cut: train both on all accepted data.
    quick = {"n_steps": 20, "n_steps_per_epoch": 10, "dataset": "ant_skills"}
    ops = {"policy__ant": quick, "baseline__ant": quick, "evaluation__ant": {"seeds": [1000], "steps": 40}}
    run_job(defs, instance, "train_ant", ops=ops)

    policy = latest_checkpoint("ant-policy")
    manifest = json.loads((policy / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "ant_skills" and manifest["dataset"]["version"] == "1.0.0"
    # Lineage in the manifest: every file of the dataset version by source, path in its batch and hash.
    truth = _truth(fleet)
    assert {s["source_file"] for s in manifest["dataset"]["sources"]} == set(truth["file"])
    assert {s["source"] for s in manifest["dataset"]["sources"]} == {SOURCE}
    assert manifest["train_config"]["reward_column"] == "combined_reward"
    assert (policy / "adapters.safetensors").exists()
    ckpt = load_checkpoint(policy)
    state = storage.read_table("validated_episodes")["observation.state"].to_numpy()[:4]
    state = np.stack(state)
    actions = ckpt.act(state, ["walk forward"])
    assert actions.shape == (4, 8) and np.abs(actions).max() <= 1.0
    np.testing.assert_array_equal(actions, load_checkpoint(policy).act(state, ["walk forward"]))

    table = storage.read_partition("evaluation", "ant")
    assert set(table["policy"]) == {"policy", "baseline"}
    # the declared skills, and the paraphrases the target declares, each scored apart
    paraphrases = {t for texts in load_target("ant").evaluation.paraphrases.values() for t in texts}
    assert set(table["instruction"]) == {"walk forward", "turn left", "turn right", "all skills"} | paraphrases | {"all paraphrases"}
    assert table["normalized_score"].is_finite().all()

    # Same data, same config: the re-run trains nothing and reuses the checkpoints.
    run_job(defs, instance, "train_ant", ops=ops)
    assert len(list_checkpoints("ant-policy")) == 1
    assert len(list_checkpoints("ant-baseline")) == 1
