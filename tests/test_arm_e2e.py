"""The second embodiment through every stage: a simulated arm fleet from landing to a closed-loop evaluation."""
from __future__ import annotations

import json

import dagster as dg
import numpy as np
import polars as pl

from foundations import landing, storage
from foundations.targets import load_target
from pipelines.runner import dagster_home, ingest_pending, run_job

SOURCE = "arm_fleet_ros2"


def test_arm_fleet_through_every_stage(tmp_path, monkeypatch, smollm2_dir):
    from simulator.embodiments import get_embodiment
    from training.checkpoints import latest_checkpoint, load_checkpoint

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    arm = get_embodiment("arm")
    out = tmp_path / "arm_logs"
    arm.simulate_fleet(16, out, seed=3, fault_rate=0.25)
    truth = pl.read_ndjson(out / "ground_truth.jsonl")
    key = landing.land([out], SOURCE, "arm-0001")
    dagster_home()
    from pipelines.definitions import defs

    ingest_pending(progress=False, resources={"referee": {"model_dir": str(smollm2_dir), "segment_steps": 50}})
    accepted = storage.read_partition("validated_episodes", key)
    files = set(accepted["source_file"])
    assert files and not files & set(truth.filter(pl.col("fault").is_not_null())["file"])
    assert accepted["observation.state"].list.len().unique().to_list() == [8]

    # Scores read the arm's profile: experts reach and sweep, the random operator does not.
    scores = storage.read_partition("episode_scores", key).join(
        accepted.group_by("episode_id").agg(pl.col("source_file").first()), on="episode_id"
    ).join(truth.select(pl.col("file").alias("source_file"), "operator"), on="source_file")
    mean = dict(scores.group_by("operator").agg(pl.col("progress").mean()).iter_rows())
    assert mean["expert"] > mean.get("random", 0.0) + 0.3, mean
    # The referee read the arm's own rendering (its skills' measures: the target's distance, the end
    # effector's bearing; no base pose, no posture).
    segments = storage.read_partition("referee_segments", key)
    assert segments["text"].str.contains("of the starting distance|swept the end effector").all()
    assert not segments["text"].str.contains("heading|upright").any()

    with dg.DagsterInstance.get() as instance:
        run_job(defs, instance, "publish_job")
        quick = {"n_steps": 20, "n_steps_per_epoch": 10, "dataset": "arm_skills"}
        ops = {"policy__arm": quick, "baseline__arm": quick, "evaluation__arm": {"seeds": [1000], "steps": 30}}
        run_job(defs, instance, "train_arm", ops=ops)

    ckpt = load_checkpoint(latest_checkpoint("arm-policy"))
    actions = ckpt.act(np.stack(accepted["observation.state"].to_numpy()[:3]), ["reach the target"])
    assert actions.shape == (3, 2) and np.abs(actions).max() <= 1.0
    manifest = json.loads((latest_checkpoint("arm-policy") / "manifest.json").read_text())
    assert {s["source"] for s in manifest["dataset"]["sources"]} == {SOURCE}
    table = storage.read_partition("evaluation", "arm")
    # the declared skills, and the paraphrases the target declares, each scored apart
    paraphrases = {t for texts in load_target("arm").evaluation.paraphrases.values() for t in texts}
    assert set(table["instruction"]) == {"reach the target", "sweep left", "sweep right", "all skills"} | paraphrases | {"all paraphrases"}
    assert table["normalized_score"].is_finite().all()
