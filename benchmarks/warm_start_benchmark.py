"""Nightly warm start against training from scratch, in one process, on one simulated embodiment.

  day 1  a simulated fleet (all skills) is landed, ingested (validation, referee fine-tune and labels)
         and published through the pipeline's own jobs, except a share (--held-back) of one skill's
         episodes (--grow-skill, default the embodiment's first skill); a policy is trained on the
         target's policy dataset from scratch for N updates (--n-steps).
  day 2  the held-back episodes land as a second batch and the dataset publishes a new version.
         (a) from scratch on day 2 for N updates, scored closed-loop every N / --checkpoints updates;
         (b) warm-started from day 1's model (all networks and optimizer state, `train(init_from=...)`,
         as the nightly retraining does) and scored at the same checkpoints, from 0 updates (day 1's
         model as it is) up to --warm-max x N.

Printed first: the curated training episodes and steps per instruction on each day and what day 2 adds (how
much the data really grew). With --train-seeds K, day 1, the warm start and the from-scratch run are repeated
with K training seeds (the same evaluation seeds each time) and pooled per checkpoint, with each training
seed's mean beside the pooled one.

Both use the pipeline's training path: the target's TrainConfig (`learner_config`: CPU preset, IQL +
LoRA-MoE on its reward column), the train split of the published version. Every score is a
normalized closed-loop score (training/evaluation.py) on the same fixed seeds, with a 95 % bootstrap
interval. Reported: the fewest updates at which warm start reaches the from-scratch final score, as a
share of N (goal <= 0.5), and per skill warm vs scratch on the skills whose data did not change, with
the 95 % interval of the paired (same seed) difference.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/warm_start_benchmark.py --embodiment ant --n-steps 1000 --seeds 6
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/warm_start_benchmark.py --embodiment ant --episodes 72 \
        --held-back 0.8 --n-steps 2000 --checkpoints 4 --warm-max 0.5 --seeds 10 --data-root runs/warm-ant
    (then, on the same data: --data-root runs/warm-ant --versions 1.0.0 1.1.0 --train-seeds 4)
    (data and Dagster runs go to a fresh temporary folder unless --data-root names one)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def split_fleet(truth: list[dict], skill: str, held_back: float) -> tuple[list[str], list[str]]:
    """(day 1 files, day 2 files): day 2 holds the last `held_back` share of `skill`'s episodes."""
    of_skill = [r["file"] for r in truth if r["instruction"] == skill]
    n_late = int(round(len(of_skill) * held_back))
    if not of_skill or n_late == 0:
        raise ValueError(f"no episode of {skill!r} is held back ({len(of_skill)} of that skill, share {held_back})")
    late = set(of_skill[len(of_skill) - n_late:])
    return [r["file"] for r in truth if r["file"] not in late], sorted(late)


def growth(day1: pl.DataFrame, day2: pl.DataFrame, reward: str) -> pl.DataFrame:
    """Per instruction: curated training episodes and steps on each day, the episodes day 2 adds and drops,
    and the mean `reward` per step of the episodes both days train on (a re-fine-tuned referee relabels)."""
    def count(table: pl.DataFrame, day: int) -> pl.DataFrame:
        return table.group_by("language_instruction").agg(
            pl.col("episode_id").n_unique().alias(f"episodes_day{day}"), pl.len().alias(f"steps_day{day}"))

    ids = [set(t["episode_id"].unique()) for t in (day1, day2)]
    new, gone, kept = ids[1] - ids[0], ids[0] - ids[1], ids[0] & ids[1]
    both = pl.concat([day1.with_columns(pl.lit(1).alias("day")), day2.with_columns(pl.lit(2).alias("day"))],
                     how="diagonal_relaxed")
    changes = both.group_by("language_instruction").agg(
        pl.col("episode_id").filter(pl.col("episode_id").is_in(new)).n_unique().alias("episodes_added"),
        pl.col("episode_id").filter(pl.col("episode_id").is_in(gone)).n_unique().alias("episodes_dropped"),
        *(pl.col(reward).filter(pl.col("episode_id").is_in(kept) & (pl.col("day") == d)).mean()
          .alias(f"kept_{reward}_day{d}") for d in (1, 2)))
    return (count(day1, 1).join(count(day2, 2), on="language_instruction", how="full", coalesce=True)
            .join(changes, on="language_instruction", how="full", coalesce=True).fill_null(0)
            .with_columns((pl.col("steps_day2").cast(pl.Int64) - pl.col("steps_day1")).alias("steps_added"))
            .sort("language_instruction"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embodiment", default="ant", help="simulated embodiment (ant or arm)")
    parser.add_argument("--episodes", type=int, default=48, help="simulated episodes, both days together")
    parser.add_argument("--operators", default="default", help="operator mix of the simulated fleet")
    parser.add_argument("--grow-skill", default=None, help="the skill whose data grows on day 2 (default: the first)")
    parser.add_argument("--held-back", type=float, default=0.5, help="share of its episodes that arrive on day 2")
    parser.add_argument("--n-steps", type=int, default=1000, help="N: updates of a from-scratch run")
    parser.add_argument("--checkpoints", type=int, default=5, help="scores every N / this many updates")
    parser.add_argument("--warm-max", type=float, default=0.6, help="the warm start trains up to this x N updates")
    parser.add_argument("--seeds", type=int, default=5, help="rollouts per skill (fixed seeds 1000, 1001, ...)")
    parser.add_argument("--seed", type=int, default=0, help="fleet simulation seed")
    parser.add_argument("--train-seeds", type=int, default=1,
                        help="repeat day 1, warm start and from scratch with this many training seeds (the target's "
                             "seed, +1, ...): one training run per arm leaves the training seed's luck in the figures")
    parser.add_argument("--first-train-seed", type=int,
                        help="start the training seeds here instead of at the target's seed (to add seeds to an "
                             "earlier run: --report reads the two --save files joined)")
    parser.add_argument("--data-root", type=Path, help="data root (default: a fresh temporary folder)")
    parser.add_argument("--versions", nargs=2, metavar=("DAY1", "DAY2"),
                        help="train on these published versions in --data-root (of an earlier run) instead of simulating")
    parser.add_argument("--reset-optimizer", action="store_true",
                        help="diagnostic: the warm start keeps day 1's weights but starts Adam's moments afresh "
                             "(the nightly retraining carries them over); trains no from-scratch run: report it "
                             "with --report on its --save rollouts joined to the from-scratch rows of a plain run")
    parser.add_argument("--save", type=Path, help="also write every rollout here (Parquet)")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the tables of rollouts saved with --save")
    args = parser.parse_args()
    if args.report:  # several files (runs of other training seeds) are joined
        return report(pl.concat([pl.read_parquet(p) for p in args.report], how="diagonal_relaxed"))
    if args.versions and not args.data_root:
        parser.error("--versions reads an earlier run's data: give its --data-root")
    if args.n_steps % args.checkpoints:
        parser.error("--n-steps must be a multiple of --checkpoints")

    root = args.data_root or Path(tempfile.mkdtemp(prefix="robocurate-warm-start-"))
    os.environ["ROBOCURATE_HOME"] = str(root)
    os.environ["DAGSTER_HOME"] = str(root / "dagster")
    import dagster as dg

    from foundations import landing, storage
    from foundations.publish import resolve_version
    from foundations.targets import list_targets, load_target
    from pipelines.assets.train import TrainingConfig, learner_config, train_split
    from pipelines.runner import dagster_home, ingest_pending, run_job
    from simulator.driver import read_ground_truth
    from simulator.embodiments import get_embodiment
    from training.checkpoints import Checkpoint
    from training.evaluation import evaluable, evaluate_policy, reference_scores
    from training.offline_rl import train

    started = time.perf_counter()
    dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    instance = dg.DagsterInstance.get()
    emb = get_embodiment(args.embodiment)
    targets = [t for t in map(load_target, list_targets()) if t.evaluation.simulator == emb.name]
    if not targets:
        parser.error(f"no training target evaluates in simulator {emb.name!r}")
    target = targets[0]
    grow = args.grow_skill or next(iter(emb.skills))
    records = {}
    if args.versions:  # both days published by an earlier run into --data-root
        records = {day: resolve_version(target.policy.dataset, v) for day, v in zip((1, 2), args.versions)}
    elif any(landing.split_key(k)[0] == emb.source for k in landing.list_batches()):
        parser.error(f"{emb.source} has landed batches in {root} already: give a fresh --data-root (or --versions)")
    else:
        out = storage.area("fleet_sim") / emb.source
        print(f"simulating {args.episodes} {emb.name} episodes, operators {args.operators!r} -> {out}", flush=True)
        emb.simulate_fleet(args.episodes, out, seed=args.seed, operators=args.operators)
        day1_files, day2_files = split_fleet(read_ground_truth(out), grow, args.held_back)
        truth = {r["file"]: r["instruction"] for r in read_ground_truth(out)}
        landed = pl.DataFrame({"language_instruction": [truth[f] for f in day2_files]})
        print(f"day 2 lands {len(day2_files)} episode files: "
              f"{dict(landed['language_instruction'].value_counts().iter_rows())}", flush=True)
        for day, files in ((1, day1_files), (2, day2_files)):
            landing.land([out / f for f in files], emb.source, f"warm-day{day}")
            ingest_pending(progress=False)
            run_job(defs, instance, "publish_job")
            records[day] = resolve_version(target.policy.dataset, "latest")

    tables = {day: train_split(record) for day, record in records.items()}
    for day, table in tables.items():
        print(f"day {day}: {target.policy.dataset} {records[day]['version']}: "
              f"{table['episode_id'].n_unique()} training episodes, {table.height} steps", flush=True)
    with pl.Config(tbl_cols=-1, tbl_width_chars=250, fmt_str_lengths=30, tbl_hide_dataframe_shape=True):
        print("curated training data per instruction (day 2 vs day 1):\n"
              f"{growth(tables[1], tables[2], target.policy.reward_column or 'reward')}", flush=True)

    every = args.n_steps // args.checkpoints
    config = learner_config(target, target.policy,
                            TrainingConfig(n_steps=args.n_steps, n_steps_per_epoch=every, num_threads=1))
    seeds = list(range(1000, 1000 + args.seeds))
    steps = target.evaluation.steps or emb.episode_steps
    rollouts: list[pl.DataFrame] = []

    def scorer(run: str, train_seed: int):
        """on_epoch hook: score the policy of `run` after each epoch (label '<run>@<updates>'; the training
        seeds of one label are pooled in the tables)."""
        def score(step: int, algo) -> None:
            policy = Checkpoint(Path(), algo, {"observation": {"instructions": instructions}})
            frame = evaluate_policy(emb, policy.policy, skills, seeds, steps, refs, label=f"{run}@{step}")
            rollouts.append(frame.with_columns(pl.lit(run).alias("run"), pl.lit(step).alias("updates"),
                                               pl.lit(train_seed).alias("train_seed")))
            print(f"  {run} (training seed {train_seed}) after {step} updates: {frame['normalized_score'].mean():6.1f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        return score

    instructions = sorted(tables[2]["language_instruction"].drop_nulls().unique().to_list())  # both days'
    skills, unknown = evaluable(emb, instructions)
    if unknown:
        print(f"not scored (no skill in {emb.name}): {unknown}")
    refs = reference_scores(emb, sorted(set(skills.values())), seeds, steps)
    print(f"\n{target.name}: {config.algorithm} + {config.encoder_type} on {config.reward_column}, preset {config.preset}, "
          f"N = {args.n_steps}, scored every {every} updates on {len(seeds)} seeds per skill", flush=True)

    warm_steps = int(round(args.warm_max * args.n_steps / every)) * every
    first = config.seed if args.first_train_seed is None else args.first_train_seed
    for train_seed in range(first, first + args.train_seeds):
        seeded = dataclasses.replace(config, seed=train_seed)
        print(f"day 1, from scratch (training seed {train_seed}):", flush=True)
        day1 = train(tables[1], seeded, progress=False)
        if day1.instructions != instructions:
            raise SystemExit(f"day 1 lacks instructions of day 2 ({day1.instructions}): no warm start possible")
        scorer("warm", train_seed)(0, day1.algo)  # the warm start before any update on day 2: day 1's model
        if args.reset_optimizer:  # cleared here, the optimizer state that `init_from` copies is empty
            day1.algo.reset_optimizer_states()
        print("day 2, warm start from day 1:", flush=True)
        train(tables[2], seeded, progress=False, init_from=day1.algo, n_steps=warm_steps,
              on_epoch=scorer("warm", train_seed))
        if not args.reset_optimizer:  # the from-scratch run does not depend on it: a plain run has it
            print("day 2, from scratch:", flush=True)
            scratch = train(tables[2], seeded, progress=False, on_epoch=scorer("scratch", train_seed))
        scores = pl.concat(rollouts).with_columns(pl.lit(grow).alias("grown_skill"), pl.lit(args.n_steps).alias("n"))
        if args.save:  # after each training seed, so that a run cut short can still be reported
            scores.write_parquet(args.save)
    if args.reset_optimizer:
        return
    report(scores)
    print(f"\nday 1 {day1.seconds:.0f} s, day 2 from scratch {scratch.seconds:.0f} s of training "
          f"({scratch.seconds_per_update:.3f} s/update); whole run {time.perf_counter() - started:.0f} s")


def report(scores: pl.DataFrame) -> None:
    """The tables: overall score per checkpoint of both runs, where warm start reaches the from-scratch final
    score, and per skill warm vs scratch (rollouts of `main`, one row per policy, skill, training and evaluation
    seed). The training seeds of a label are pooled: its interval resamples rollouts, not training runs, so the
    mean of each training seed is printed beside it."""
    from training.evaluation import per_skill

    if "train_seed" not in scores.columns:  # saved before --train-seeds
        scores = scores.with_columns(pl.lit(0).alias("train_seed"))
    n, grow = scores["n"][0], scores["grown_skill"][0]
    skills = dict(scores.select("instruction", "skill").unique().iter_rows())
    seeds, train_seeds = scores["seed"].unique(), scores["train_seed"].unique().sort()
    table = per_skill(scores.drop("run", "updates", "grown_skill", "n", "train_seed"))
    overall = table.filter(pl.col("instruction") == "all skills")
    final = overall.filter(pl.col("policy") == f"scratch@{n}").row(0, named=True)

    def label_order(label: str) -> tuple[str, int]:
        run, step = label.split("@")
        return run, int(step)

    by_seed = {(label, t): mean for label, t, mean in scores.group_by("policy", "instruction", "train_seed")
               .agg(pl.col("normalized_score").mean()).group_by("policy", "train_seed")
               .agg(pl.col("normalized_score").mean()).iter_rows()}
    print(f"\nnormalized score, mean of {len(skills)} skills [95 % bootstrap CI], {len(seeds)} seeds per skill "
          f"x {len(train_seeds)} training seeds {train_seeds.to_list()} (mean of each after |)")
    print(f"{'updates':>8} {'share of N':>10}   {'from scratch':>24}   {'warm start':>24}")
    rows = {r["policy"]: r for r in overall.iter_rows(named=True)}
    grid = sorted({label_order(p)[1] for p in rows})
    for step in grid:
        cells = []
        for run in ("scratch", "warm"):
            r = rows.get(f"{run}@{step}")
            each = " ".join(f"{by_seed[(f'{run}@{step}', t)]:5.1f}" for t in train_seeds) if r else ""
            cells.append(f"{r['normalized_score']:6.1f} [{r['ci95_low']:6.1f}, {r['ci95_high']:6.1f}] | {each}" if r else "")
        width = 27 + 6 * len(train_seeds)
        print(f"{step:8d} {step / n:10.2f}   {cells[0]:>{width}}   {cells[1]:>{width}}")
    reached = [label_order(p)[1] for p in sorted(rows, key=label_order)
               if p.startswith("warm@") and rows[p]["normalized_score"] >= final["normalized_score"]]
    if reached:
        at = reached[0]
        print(f"\nwarm start reaches the from-scratch final score {final['normalized_score']:.1f} after {at} updates "
              f"= {at / n:.2f} x N (goal <= 0.50)")
    else:
        at = warm_steps = scores.filter(pl.col("run") == "warm")["updates"].max()
        print(f"\nwarm start does not reach the from-scratch final score {final['normalized_score']:.1f} within "
              f"{warm_steps} updates = {warm_steps / n:.2f} x N (goal <= 0.50)")

    per = {(r["policy"], r["instruction"]): r for r in table.iter_rows(named=True)}
    last = scores.filter(pl.col("run") == "warm")["updates"].max()
    for warm_at in sorted({at, last}):  # where it reaches the score, and after all its updates
        compare_skills(scores, per, skills, grow, warm_at, n)


def compare_skills(scores: pl.DataFrame, per: dict, skills: dict, grow: str, at: int, n: int) -> None:
    """Per skill: warm start after `at` updates against from scratch after `n`, with the paired difference."""
    from training.evaluation import bootstrap_ci

    print(f"\nper skill: warm start after {at} updates vs from scratch after {n} "
          f"(grown on day 2: {grow!r}); difference paired by training and evaluation seed, 95 % bootstrap CI, "
          f"then the mean difference of each training seed")
    for instruction in sorted(skills):
        w, s = per[(f"warm@{at}", instruction)], per[(f"scratch@{n}", instruction)]
        pair = (scores.filter((pl.col("instruction") == instruction) & pl.col("policy").is_in([w["policy"], s["policy"]]))
                .pivot(on="run", index=["train_seed", "seed"], values="normalized_score").sort("train_seed", "seed"))
        diff = (pair["warm"] - pair["scratch"]).to_numpy()
        each = pair.group_by("train_seed").agg((pl.col("warm") - pl.col("scratch")).mean()).sort("train_seed")
        low, high = bootstrap_ci([diff])
        tag = "grown" if skills[instruction] == grow else "unchanged"
        print(f"  {instruction:<22} {tag:<10} warm {w['normalized_score']:6.1f} [{w['ci95_low']:6.1f}, {w['ci95_high']:6.1f}]"
              f"  scratch {s['normalized_score']:6.1f} [{s['ci95_low']:6.1f}, {s['ci95_high']:6.1f}]"
              f"  warm - scratch {np.mean(diff):+6.1f} [{low:+6.1f}, {high:+6.1f}] | "
              + " ".join(f"{d:+5.1f}" for d in each["warm"]))


if __name__ == "__main__":
    main()
