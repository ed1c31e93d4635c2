"""`robocurate demo` / `make demo`: every simulated fleet through every asset, with a printed summary.

Every figure printed is also written to `<data root>/reports/demo.json` under stable dotted keys:
`quarantine.<source>.*`, `dataset.<recipe>.*`, `referee.<robot>.*`, `policy.<robot>.*`, `baseline.<robot>.*`
(`.mean` and its 95 % bootstrap interval `.ci95` = [low, high], per skill `.skill.<instruction>[.ci95]`, and
the mean over paraphrased instructions `.paraphrases[.ci95]`).
"""
from __future__ import annotations

import json
import time

import dagster as dg
import polars as pl

from foundations import landing, storage
from foundations.catalog import list_configs
from foundations.ingest import load_mapping
from pipelines.runner import dagster_home, ingest_pending, run_job

DEMO_BATCH = "fleet-0001"


def run_demo(episodes: int = 60, seed: int = 0) -> int:
    home = dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    _simulate_missing_fleets(episodes, seed)
    print("[2/3] ingesting every new or changed landing batch (ingest_job: validate, score, referee)")
    ingest_pending()
    print("[3/3] publishing, training and evaluating (curate_job)")
    run_job(defs, instance, "curate_job")
    report = collect_report()
    report["seconds"] = round(time.perf_counter() - started, 1)
    path = storage.area("reports") / "demo.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True))
    tmp.replace(path)
    print_report(report)
    print(f"every figure above is in {path}; open the Dagster UI with `make dev` (DAGSTER_HOME={home})")
    return 0


def _simulate_missing_fleets(episodes: int, seed: int) -> None:
    """Simulate and land each embodiment's fleet whose source has no landing batch yet."""
    from simulator.embodiments import EMBODIMENTS, get_embodiment

    landed = {landing.split_key(k)[0] for k in landing.list_batches()}
    for name in EMBODIMENTS:
        emb = get_embodiment(name)
        if emb.source in landed:
            print(f"[1/3] {emb.source} has landing batches already; no new {name} simulation")
            continue
        out = storage.area("fleet_sim") / emb.source
        print(f"[1/3] simulating {episodes} {name} episodes (MuJoCo) -> {out}")
        emb.simulate_fleet(episodes, out, seed=seed)
        landing.land([p for p in sorted(out.iterdir()) if p.name != "ground_truth.jsonl"], emb.source, DEMO_BATCH)


def collect_report() -> dict:
    """Every headline figure of the data root, as flat dotted keys."""
    report: dict = {}
    report |= _quarantine_figures()
    report |= _dataset_figures()
    report |= _referee_figures()
    report |= _policy_figures()
    return report


def _quarantine_figures() -> dict:
    from pipelines.status import file_status

    status = file_status()
    out = {}
    for source in status["source"].unique().sort().to_list():
        files = status.filter(pl.col("source") == source)
        eps = files.select(pl.col("episodes").explode()).unnest("episodes").drop_nulls("episode_id")
        out |= {
            f"quarantine.{source}.files": files.height,
            f"quarantine.{source}.files_unreadable": int((files["outcome"] == "unreadable").sum()),
            # readable files rejected whole (a missing topic, a field that does not fit the mapping)
            f"quarantine.{source}.files_rejected": int(((files["outcome"] == "quarantined")
                                                        & (files["episodes"].list.len() == 0)).sum()),
            f"quarantine.{source}.files_duplicate": int((files["outcome"] == "duplicate").sum()),
            f"quarantine.{source}.episodes_ingested": eps.height,
            f"quarantine.{source}.episodes_accepted": int((eps["outcome"] == "accepted").sum()) if eps.height else 0,
            f"quarantine.{source}.episodes": int((eps["outcome"] == "quarantined").sum()) if eps.height else 0,
        }
    return out


def _dataset_figures() -> dict:
    from foundations.publish import list_versions

    out = {}
    for name in list_configs("recipes"):
        versions = list_versions(name)
        if versions:
            v = versions[-1]
            out |= {f"dataset.{name}.version": v["version"], f"dataset.{name}.content_hash": v["content_hash"][:12],
                    f"dataset.{name}.path": str(v["path"])}
    return out


def _referee_figures() -> dict:
    from quality.referee import referee_agreement

    segments = storage.read_table("referee_segments")
    accepted = storage.read_table("validated_episodes")
    if segments is None or accepted is None:
        return {}
    out = {}
    for source in accepted["source"].unique().sort().to_list():
        mapping = load_mapping(source)
        acc = accepted.filter(pl.col("source") == source)
        segs = segments.join(acc.select("episode_id").unique(), on="episode_id", how="semi")
        if "referee_trained_on" in segs.columns:  # judged on episodes the referee did not learn from
            segs = segs.filter(~pl.col("referee_trained_on"))
        if segs.is_empty():
            continue
        a = referee_agreement(segs, acc, mapping.profile, segment_steps=int(segs["n_steps"].max()))
        key = f"referee.{mapping.robot}"
        out |= {f"{key}.voc": a.get("voc"), f"{key}.voc_constant": a.get("voc_time_baseline"),
                f"{key}.spearman": a.get("spearman_segment"), f"{key}.accuracy": a.get("accuracy"),
                f"{key}.majority_accuracy": a.get("majority_accuracy"), f"{key}.segments": a.get("segments"),
                f"{key}.episodes": a.get("episodes")}
    return out


def _policy_figures() -> dict:
    """Normalized scores (0 = random operator, 100 = expert operator) of each target's policy and
    baseline, overall and per skill, keyed by the target's robot."""
    from foundations.targets import list_targets, load_target
    from pipelines.assets.train import EVALUATION_TABLE

    out = {}
    for name in list_targets():
        target = load_target(name)
        table = storage.read_partition(EVALUATION_TABLE, name)
        if table is None:
            continue
        for role in ("policy", "baseline"):
            learner = getattr(target, role)
            out[f"{role}.{target.robot}.trained"] = f"{learner.algorithm} on {learner.dataset}"
        has_ci = "ci95_low" in table.columns  # tables written before the intervals existed lack them
        for row in table.iter_rows(named=True):
            role, instruction = row["policy"], row["instruction"]
            skill = {"all skills": "mean", "all paraphrases": "paraphrases"}.get(instruction, f"skill.{instruction}")
            out[f"{role}.{target.robot}.{skill}"] = row["normalized_score"]
            if has_ci:
                ci_key = f"{role}.{target.robot}.ci95" if skill == "mean" else f"{role}.{target.robot}.{skill}.ci95"
                out[ci_key] = [row["ci95_low"], row["ci95_high"]]
            if instruction == "all skills":
                out[f"{role}.{target.robot}.rollouts"] = row["episodes"]
    return out


def print_report(report: dict) -> None:
    """The report as a person reads it: one block per stage, baselines beside every figure."""
    def keys(prefix: str) -> list[str]:
        return sorted({k[len(prefix):].split(".")[0] for k in report if k.startswith(prefix)})

    def num(key: str, fmt: str = ".3f") -> str:
        value = report.get(key)
        return "n/a" if value is None else format(value, fmt)

    print("\n=== robocurate demo summary ===")
    print("sources (landed files -> episodes):")
    for src in keys("quarantine."):
        q = f"quarantine.{src}."
        print(f"    {src:<24} {report[q + 'files']} files ({report[q + 'files_unreadable']} unreadable, "
              f"{report[q + 'files_rejected']} rejected whole, {report[q + 'files_duplicate']} duplicate) -> "
              f"{report[q + 'episodes_ingested']} episodes: "
              f"{report[q + 'episodes_accepted']} accepted, {report[q + 'episodes']} quarantined")
    print("datasets (newest version):")
    for name in keys("dataset."):
        d = f"dataset.{name}."
        print(f"    {name:<24} {report[d + 'version']} (content {report[d + 'content_hash']}) at {report[d + 'path']}")
    print("referee agreement with true progress on episodes held out from its fine-tuning [baseline]:")
    for robot in keys("referee."):
        r = f"referee.{robot}."
        print(f"    {robot:<8} value-order corr. {num(r + 'voc')} [constant per segment {num(r + 'voc_constant')}], "
              f"Spearman {num(r + 'spearman')} [0], label accuracy {num(r + 'accuracy')} "
              f"[majority label {num(r + 'majority_accuracy')}], {report.get(r + 'segments')} segments "
              f"of {report.get(r + 'episodes')} episodes")

    def scored(key: str) -> str:
        ci = report.get(key.removesuffix(".mean") + ".ci95")
        interval = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
        return f"{num(key, '.1f')}{interval}"

    robots = keys("policy.")
    if robots:
        print("normalized score [95 % bootstrap CI] (0 = random operator, 100 = expert operator, same seeds for all):")
        print(f"    {'robot':<8}{'skill':<22}{'policy':>22}{'baseline':>22}")
    for robot in robots:
        skills = sorted({k.split(".skill.", 1)[1].removesuffix(".ci95") for k in report
                         if k.startswith(f"policy.{robot}.skill.")})
        rows = [(s_, f"skill.{s_}") for s_ in skills] + [("mean", "mean")]
        if f"policy.{robot}.paraphrases" in report:
            rows.append(("paraphrases (mean)", "paraphrases"))
        for skill, key in rows:
            print(f"    {robot:<8}{skill:<22}{scored(f'policy.{robot}.{key}'):>22}"
                  f"{scored(f'baseline.{robot}.{key}'):>22}")
        print(f"    ({robot}: policy {report.get(f'policy.{robot}.trained')}, baseline "
              f"{report.get(f'baseline.{robot}.trained')}; {report.get(f'policy.{robot}.rollouts')} rollouts each)")
    print(f"took {report.get('seconds', 0):.0f} s")
