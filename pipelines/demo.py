"""`robocurate demo` / `make demo`: a simulated fleet through every asset, with a printed summary."""
from __future__ import annotations

import time

import dagster as dg
import polars as pl

from foundations import landing, storage
from foundations.ingest.mapping import load_mapping
from pipelines.runner import dagster_home, pending_batches, run_job

DEMO_BATCH = "fleet-0001"
MAPPING = "ant_fleet_ros2"


def run_demo(episodes: int = 60, seed: int = 0) -> int:
    home = dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    if not landing.list_batches():
        from simulator.fleet import simulate_fleet

        sim_dir = storage.area("fleet_sim") / DEMO_BATCH
        print(f"[1/3] simulating {episodes} Ant episodes (MuJoCo) -> {sim_dir}")
        simulate_fleet(episodes, sim_dir, seed=seed)
        landing.land_files(sorted(sim_dir.glob("*.mcap")), DEMO_BATCH)
    else:
        print(f"[1/3] landing area already has batches {landing.list_batches()}; no new simulation "
              "(add logs with `robocurate simulate` + `robocurate land`)")

    glob = load_mapping(MAPPING).file_glob
    pending = pending_batches(instance, glob)
    instance.add_dynamic_partitions("landing_batch", [b for b in pending if not instance.has_dynamic_partition("landing_batch", b)])
    print(f"[2/3] ingesting {len(pending)} new or changed landing batch(es): {pending or 'none'}")
    for batch in pending:
        run_job(defs, instance, "ingest_job", partition_key=batch)

    print("[3/3] publishing, labelling, training and evaluating (curate_job)")
    run_job(defs, instance, "curate_job")
    print_summary(instance, time.perf_counter() - started, home)
    return 0


def print_summary(instance: dg.DagsterInstance, seconds: float, home) -> None:
    episodes = storage.read_table("episodes")
    accepted = storage.read_table("validated_episodes")
    quarantine = storage.read_table("quarantine")
    n_ingested = episodes["episode_id"].n_unique() if episodes is not None else 0
    n_accepted = accepted["episode_id"].n_unique() if accepted is not None else 0
    q = quarantine if quarantine is not None else pl.DataFrame(schema={"episode_id": pl.String, "source_file": pl.String, "check": pl.String})
    rejected_eps = q["episode_id"].drop_nulls().n_unique()
    rejected_files = q.filter(pl.col("episode_id").is_null())["source_file"].n_unique()
    print("\n=== robocurate demo summary ===")
    print(f"episodes ingested:    {n_ingested}")
    print(f"episodes accepted:    {n_accepted}")
    print(f"episodes quarantined: {rejected_eps}  (+ {rejected_files} unreadable files)")
    for check, n in q.group_by("check").len().sort("len", descending=True).iter_rows():
        print(f"    {n:3d} x {check}")
    for line in _published_lines(instance):
        print(line)
    for line in _referee_lines(accepted):
        print(line)
    for line in _policy_lines():
        print(line)
    print(f"took {seconds:.0f} s; open the Dagster UI with `make dev` (DAGSTER_HOME={home})")


def _published_lines(instance: dg.DagsterInstance) -> list[str]:
    from foundations.publish import list_versions
    from foundations.recipes import list_recipes

    lines = []
    for name in list_recipes():
        versions = list_versions(name)
        if versions:
            v = versions[-1]
            lines.append(f"dataset {name}: version {v['version']} (content {v['content_hash'][:12]}) at {v['path']}")
    return lines


def _referee_lines(accepted: pl.DataFrame | None) -> list[str]:
    from quality.referee import referee_agreement

    segments = storage.read_table("referee_segments")
    if segments is None or accepted is None:
        return ["referee: no labels yet"]
    steps = int(segments["n_steps"].max())
    a = referee_agreement(segments, accepted, segment_steps=steps)
    return [
        f"referee agreement with true progress ({a['segments']} segments of {a['episodes']} episodes):",
        f"    value-order correlation {a['voc']} (a referee adding a constant per segment: {a['voc_time_baseline']})",
        f"    Spearman(segment reward, segment progress) {a['spearman_segment']}",
        f"    label accuracy {a['accuracy']} (always the most common label: {a['majority_accuracy']})",
    ]


def _policy_lines() -> list[str]:
    table = storage.read_partition("policy_evaluation", "latest")
    if table is None:
        return ["policy: not evaluated yet"]
    wide = table.pivot(on="policy", index="instruction", values="normalized_score").sort("instruction")
    lines = ["normalized score per skill (0 = random operator, 100 = expert operator):",
             f"    {'skill':<14}{'IQL + LoRA-MoE':>16}{'BC (all data)':>16}"]
    for row in wide.iter_rows(named=True):
        lines.append(f"    {row['instruction']:<14}{row.get('policy_checkpoint', float('nan')):>16.1f}"
                     f"{row.get('baseline_checkpoint', float('nan')):>16.1f}")
    return lines
