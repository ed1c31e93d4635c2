"""Closed-loop evaluation of policies in a simulated embodiment, as D4RL-style normalized scores.

A policy's score on a skill is 100 * (p - p_random) / (p_expert - p_random), where p is
the mean progress toward the instruction (the skill's measure: metres forward, radians
turned, share of the distance to a target closed) over the same seeds for everyone: 0 is
the random operator, 100 the expert operator of the fleet. Reference progress is measured
by rollouts of the embodiment (simulator.embodiments), not assumed, and cached per seed set.
Instructions the embodiment has no skill for cannot be scored: `evaluable` separates them
so that callers report them instead of failing.
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
from foundations.progress import instruction_key
from simulator.embodiments import Embodiment, Policy

REFERENCE_OPERATORS = ("random", "expert")


def evaluable(embodiment: Embodiment, instructions: list[str]) -> tuple[dict[str, str], list[str]]:
    """({instruction: the embodiment's skill it means}, [instructions it has no skill for]).

    Instructions match skills case- and whitespace-insensitively, as everywhere else.
    """
    def keys_of(texts: list[str]) -> list[str]:
        frame = pl.DataFrame({"text": texts}, schema={"text": pl.String})  # typed even when empty
        return frame.select(instruction_key(pl.col("text")))["text"].to_list()

    keys = keys_of(list(instructions))
    skills = list(embodiment.skills)
    skill_keys = keys_of(skills)
    by_key = dict(zip(skill_keys, skills))
    matched = {text: by_key[key] for text, key in zip(instructions, keys) if key in by_key}
    return matched, [text for text in instructions if text not in matched]


def paraphrase_skills(embodiment: Embodiment, paraphrases: dict[str, list[str]]) -> tuple[dict[str, str], list[str]]:
    """({paraphrase text: the skill it rewords}, [declared skills the embodiment lacks]), from a target's
    `evaluation.paraphrases` ({skill: [texts]})."""
    matched, unknown = evaluable(embodiment, list(paraphrases))
    return {text: matched[skill] for skill in matched for text in paraphrases[skill]}, unknown


def reference_scores(
    embodiment: Embodiment, skills: list[str], seeds: list[int], steps: int
) -> dict[str, dict[str, float]]:
    """skill -> {"random": progress, "expert": progress}, cached under cache/evaluation/."""
    key = hashlib.sha256(
        json.dumps([embodiment.name, skills, seeds, steps, embodiment.skills], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    path = storage.area("cache") / "evaluation" / f"reference-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    refs = {
        skill: {op: float(embodiment.reference_progress(op, skill, seeds, steps)) for op in REFERENCE_OPERATORS}
        for skill in tqdm(skills, desc=f"{embodiment.name} reference operators", unit="skill")
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(refs, indent=1))
    tmp.replace(path)
    return refs


def evaluate_policy(
    embodiment: Embodiment,
    policy_for: Callable[[str], Policy],
    skills: dict[str, str],
    seeds: list[int],
    steps: int,
    refs: dict[str, dict[str, float]],
    label: str = "policy",
    phrasing: str = "declared",
) -> pl.DataFrame:
    """One row per (instruction, seed) rollout with its normalized score.

    `skills` maps each instruction to the embodiment's skill (see `evaluable`,
    `paraphrase_skills`); the policy is asked for the instruction, the simulator for the
    skill. `phrasing` labels the rows ("declared" skills, or "paraphrase").
    """
    rows = []
    for instruction, skill in skills.items():
        policy = policy_for(instruction)
        for seed in tqdm(seeds, desc=f"{label}: {instruction}", unit="episode", leave=False):
            out = embodiment.rollout(policy, skill, seed, steps)
            rows.append({"instruction": instruction, "skill": skill, "seed": int(seed),
                         "progress": float(out["progress"]), "fell": bool(out["fell"]), "steps": int(out["steps"])})
    df = pl.DataFrame(rows, schema={"instruction": pl.String, "skill": pl.String, "seed": pl.Int64,
                                    "progress": pl.Float64, "fell": pl.Boolean, "steps": pl.Int64})
    ref = pl.DataFrame(
        {"skill": list(refs), "random": [r["random"] for r in refs.values()],
         "expert": [r["expert"] for r in refs.values()]},
        schema={"skill": pl.String, "random": pl.Float64, "expert": pl.Float64},
    )
    df = df.with_columns(pl.lit(label).alias("policy"), pl.lit(phrasing).alias("phrasing"))
    return df.join(ref, on="skill", how="left").with_columns(
        (100 * (pl.col("progress") - pl.col("random")) / (pl.col("expert") - pl.col("random"))).alias("normalized_score")
    )


BOOTSTRAP_RESAMPLES = 2000


def bootstrap_ci(groups: list[np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean over `groups` of per-group means.

    Each group (one skill's rollout scores) is resampled with replacement on its own
    (a stratified bootstrap: every resample keeps each skill's rollout count), so the
    interval of an overall score is not widened by differences between skills."""
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for scores in groups:
        scores = np.asarray(scores, dtype=np.float64)
        picks = rng.integers(0, len(scores), size=(resamples, len(scores)))
        means += scores[picks].mean(axis=1)
    means /= len(groups)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def per_skill(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Mean normalized score with its 95 % bootstrap interval, progress and fall rate per policy
    and instruction, plus an 'all skills' row per policy (mean over the declared skills, stratified
    interval) and, where rollouts asked paraphrases, an 'all paraphrases' row."""
    agg = [
        pl.col("normalized_score").mean().alias("normalized_score"),
        pl.col("progress").mean().alias("progress"),
        pl.col("fell").cast(pl.Float64).mean().alias("fall_rate"),
        pl.len().alias("episodes"),
    ]
    if "phrasing" not in rollouts.columns:
        rollouts = rollouts.with_columns(pl.lit("declared").alias("phrasing"))
    by_skill = rollouts.group_by("policy", "instruction", "phrasing").agg(agg)
    overall = (
        by_skill.group_by("policy", "phrasing")
        .agg(pl.col("normalized_score", "progress", "fall_rate").mean(), pl.col("episodes").sum())
        .with_columns(pl.when(pl.col("phrasing") == "declared").then(pl.lit("all skills"))
                      .otherwise(pl.lit("all paraphrases")).alias("instruction"))
    )
    table = pl.concat([by_skill, overall.select(by_skill.columns)])
    # Groups in a fixed order (and rollouts by seed within them), so that the seeded bootstrap gives the
    # same interval however the rollouts' rows arrive.
    ordered = rollouts.sort("policy", "instruction", "phrasing", *(["seed"] if "seed" in rollouts.columns else []))
    scores = {key: group["normalized_score"].to_numpy()
              for key, group in ordered.group_by("policy", "instruction", "phrasing", maintain_order=True)}
    intervals = []
    for policy, instruction, phrasing in table.select("policy", "instruction", "phrasing").iter_rows():
        if instruction in ("all skills", "all paraphrases"):
            groups = [v for (p, _, ph), v in scores.items() if p == policy and ph == phrasing]
        else:
            groups = [scores[(policy, instruction, phrasing)]]
        intervals.append(bootstrap_ci(groups))
    return table.with_columns(
        pl.Series("ci95_low", [lo for lo, _ in intervals]), pl.Series("ci95_high", [hi for _, hi in intervals])
    ).sort("policy", "instruction")


def paired_differences(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Every pair of policies compared rollout by rollout on the declared skills.

    For each pair, `better` minus `worse` (the higher mean first) of the normalized score on the
    same (instruction, seed): the mean over skills of the per-skill mean difference, its 95 %
    bootstrap interval stratified by skill, and `separated` when the interval excludes 0. Pairing
    removes what both policies share on a seed (an easy start, a hard target), so these intervals
    are narrower than the gap between two per-policy intervals. They resample rollouts, not
    training runs: a second training seed can move a difference by more than its interval.
    """
    if "phrasing" in rollouts.columns:
        rollouts = rollouts.filter(pl.col("phrasing") == "declared")
    wide = (rollouts.pivot(on="policy", index=["instruction", "seed"], values="normalized_score").drop_nulls()
            .sort("instruction", "seed"))  # a fixed order, so the seeded bootstrap does not depend on row order
    policies = sorted(set(rollouts["policy"].unique()) & set(wide.columns))
    by_skill = wide.partition_by("instruction", as_dict=False)
    rows = []
    for i, a in enumerate(policies):
        for b in policies[i + 1:]:
            groups = [(g[a] - g[b]).to_numpy() for g in by_skill]
            mean = float(np.mean([d.mean() for d in groups]))
            better, worse, sign = (a, b, 1.0) if mean >= 0 else (b, a, -1.0)
            low, high = sorted(sign * x for x in bootstrap_ci(groups))
            rows.append({"better": better, "worse": worse, "difference": sign * mean, "ci95_low": low,
                         "ci95_high": high, "separated": low > 0, "rollouts": int(sum(len(d) for d in groups))})
    schema = {"better": pl.String, "worse": pl.String, "difference": pl.Float64, "ci95_low": pl.Float64,
              "ci95_high": pl.Float64, "separated": pl.Boolean, "rollouts": pl.Int64}
    return pl.DataFrame(rows, schema=schema).sort("difference", descending=True)


def scores_png(table: pl.DataFrame) -> bytes:
    """Normalized score per instruction and policy with 95 % bootstrap intervals (a `per_skill` table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = [t for t in ("all skills", "all paraphrases") if t in set(table["instruction"])]
    instructions = sorted(set(table["instruction"]) - set(totals)) + totals
    policies = sorted(set(table["policy"]))
    width = 0.8 / max(1, len(policies))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(instructions)), 3.4))
    for i, policy in enumerate(policies):
        rows = {r["instruction"]: r for r in table.filter(pl.col("policy") == policy).iter_rows(named=True)}
        xs = [j + (i - (len(policies) - 1) / 2) * width for j, ins in enumerate(instructions) if ins in rows]
        mean = [rows[ins]["normalized_score"] for ins in instructions if ins in rows]
        err = np.array([[rows[ins]["normalized_score"] - rows[ins]["ci95_low"] for ins in instructions if ins in rows],
                        [rows[ins]["ci95_high"] - rows[ins]["normalized_score"] for ins in instructions if ins in rows]])
        # A one-seed interval equals its mean up to rounding (-1e-15): matplotlib refuses negative error bars.
        err = np.clip(np.nan_to_num(err), 0.0, None)
        ax.bar(xs, mean, width, yerr=err, capsize=3, label=policy)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(instructions)), instructions, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("normalized score (95 % CI)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


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
