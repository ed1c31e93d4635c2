"""The ablation table of every training target, in one run, through the pipeline's own jobs.

For each simulated embodiment: simulate a fleet (the demo's operator mix, or --operators hard:
bad operators as smooth as the expert), land and ingest it, publish the recipes, then run job
`ablate_<target>`, which trains each variant of the target's `ablation` (datasets/targets/*.yaml:
BC on all accepted data, BC on the curated cut, IQL with the referee reward alone and with the combined
reward, IQL with the robot's measured-progress reward alone (the simulated fleets log no reward of their own:
it stands in for the logged one), IQL with a single LoRA, with d3rlpy's MLP encoder and with the LoRA-MoE
transformer on the critics too (`critic_encoder: same`; the CPU preset keeps it in the policy only)) as
ordinary checkpoints and scores
them on the same seeds with 95 % bootstrap intervals. The same table is one click away in the UI
(asset ["ablation", <target>]).

    ROBOCURATE_HOME=$(mktemp -d) python benchmarks/ablation_benchmark.py --operators hard --episodes 60
    (--n-steps and --seeds shrink a run; without them the target's preset and seeds apply; --variants
    iql_referee iql_progress trains and scores only those)
"""
from __future__ import annotations

import argparse
import time

import polars as pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embodiments", nargs="*", default=None, help="default: every simulated embodiment")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--operators", default="default", help="operator mix of the simulated fleets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-steps", type=int, default=None, help="updates per variant (default: the preset's)")
    parser.add_argument("--seeds", type=int, default=None, help="rollouts per skill (default: the target's seeds)")
    parser.add_argument("--variants", nargs="*", default=None, help="only these variants (default: every one)")
    args = parser.parse_args()

    import dagster as dg

    from foundations import landing, storage
    from foundations.targets import list_targets, load_target
    from pipelines.assets.train import ABLATION_PAIRED_TABLE, ABLATION_TABLE
    from pipelines.runner import dagster_home, ingest_pending, run_job
    from simulator.embodiments import EMBODIMENTS, get_embodiment

    dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    instance = dg.DagsterInstance.get()
    names = args.embodiments or list(EMBODIMENTS)
    landed = {landing.split_key(k)[0] for k in landing.list_batches()}
    for name in names:
        emb = get_embodiment(name)
        if emb.source not in landed:
            out = storage.area("fleet_sim") / emb.source
            print(f"simulating {args.episodes} {name} episodes, operators {args.operators!r} -> {out}")
            emb.simulate_fleet(args.episodes, out, seed=args.seed, operators=args.operators)
            landing.land([p for p in sorted(out.iterdir()) if p.name != "ground_truth.jsonl"], emb.source,
                         "ablation-0001")
    ingest_pending()
    run_job(defs, instance, "publish_job")

    targets = [load_target(t) for t in list_targets()]
    targets = [t for t in targets if t.ablation and t.evaluation.simulator in names]
    for target in targets:
        config: dict = {}
        if args.n_steps:
            config |= {"n_steps": args.n_steps, "n_steps_per_epoch": max(1, args.n_steps // 10)}
        if args.seeds:
            config["seeds"] = list(range(1000, 1000 + args.seeds))
        if args.variants:
            config["variants"] = [v for v in args.variants if v in target.ablation]
        started = time.perf_counter()
        run_job(defs, instance, f"ablate_{target.name}", ops={f"ablation__{target.name}": config} if config else None)
        table = storage.read_partition(ABLATION_TABLE, target.name)
        overall = table.filter(pl.col("instruction") == "all skills").sort("normalized_score", descending=True)
        print(f"\n{target.name} ({args.operators} operators), {time.perf_counter() - started:.0f} s: "
              "normalized score [95 % bootstrap CI], same seeds for all")
        for row in overall.iter_rows(named=True):
            print(f"    {row['policy']:<18}{row['normalized_score']:7.1f}  [{row['ci95_low']:6.1f}, {row['ci95_high']:6.1f}]"
                  f"  ({row['episodes']} rollouts)")
        paired = storage.read_partition(ABLATION_PAIRED_TABLE, target.name)
        print("  paired on the same rollouts (better - worse [95 % bootstrap CI]; * = the interval excludes 0):")
        for row in paired.iter_rows(named=True):
            print(f"    {row['better']:<18} - {row['worse']:<18}{row['difference']:+7.1f}  "
                  f"[{row['ci95_low']:+6.1f}, {row['ci95_high']:+6.1f}]{' *' if row['separated'] else ''}")
        per_skill = table.filter(pl.col("instruction") != "all skills").pivot(
            on="instruction", index="policy", values="normalized_score")
        print(per_skill)


if __name__ == "__main__":
    main()
