"""Closed-loop evaluation of policies in the simulator, as D4RL-style normalized scores.

A policy's score on a skill is 100 * (p - p_random) / (p_expert - p_random), where p is
the mean progress toward the instruction (metres forward, radians turned) over the
same seeds for everyone: 0 is the random operator, 100 the expert operator of the
fleet. Reference progress is measured by rollouts, not assumed, and cached per seed set.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Callable

import numpy as np
import polars as pl
from tqdm import tqdm

from foundations import storage
from simulator.rollout import Policy, reference_progress, rollout
from simulator.skills import SKILLS

REFERENCE_OPERATORS = ("random", "expert")


def reference_scores(instructions: list[str], seeds: list[int], steps: int) -> dict[str, dict[str, float]]:
    """instruction -> {"random": progress, "expert": progress}, cached under cache/evaluation/."""
    key = hashlib.sha256(json.dumps([instructions, seeds, steps, SKILLS]).encode()).hexdigest()[:16]
    path = storage.area("cache") / "evaluation" / f"reference-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    refs = {
        instr: {op: reference_progress(op, instr, seeds, steps) for op in REFERENCE_OPERATORS}
        for instr in tqdm(instructions, desc="reference operators", unit="skill")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(refs, indent=1))
    tmp.replace(path)
    return refs


def evaluate_policy(
    policy_for: Callable[[str], Policy],
    instructions: list[str],
    seeds: list[int],
    steps: int,
    refs: dict[str, dict[str, float]],
    label: str = "policy",
) -> pl.DataFrame:
    """One row per (instruction, seed) rollout with its normalized score."""
    rows = []
    for instr in instructions:
        policy = policy_for(instr)
        for seed in tqdm(seeds, desc=f"{label}: {instr}", unit="episode", leave=False):
            rows.append(rollout(policy, instr, seed, steps))
    df = pl.DataFrame(rows).with_columns(pl.lit(label).alias("policy"))
    ref = pl.DataFrame(
        {"instruction": list(refs), "random": [r["random"] for r in refs.values()],
         "expert": [r["expert"] for r in refs.values()]}
    )
    return df.join(ref, on="instruction").with_columns(
        (100 * (pl.col("progress") - pl.col("random")) / (pl.col("expert") - pl.col("random"))).alias("normalized_score")
    )


def per_skill(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Mean normalized score, progress and fall rate per policy and skill, plus an 'all skills' row."""
    agg = [
        pl.col("normalized_score").mean().alias("normalized_score"),
        pl.col("progress").mean().alias("progress"),
        pl.col("fell").cast(pl.Float64).mean().alias("fall_rate"),
        pl.len().alias("episodes"),
    ]
    by_skill = rollouts.group_by("policy", "instruction").agg(agg)
    overall = rollouts.group_by("policy").agg(agg).with_columns(pl.lit("all skills").alias("instruction"))
    return pl.concat([by_skill, overall.select(by_skill.columns)]).sort("policy", "instruction")


def learning_curves_png(curves: dict[str, pl.DataFrame]) -> bytes:
    """Per-epoch training metrics of each policy, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({c for df in curves.values() for c in df.columns if c not in ("epoch", "step")
                      and df[c].dtype.is_numeric() and df[c].drop_nulls().len()})
    cols = min(3, max(1, len(metrics)))
    rows = int(np.ceil(len(metrics) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for name, df in curves.items():
            if metric in df.columns:
                ax.plot(df["step"], df[metric], marker="o", label=name)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("update step", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
