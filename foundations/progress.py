"""True progress toward an episode's instruction, measured from the base pose.

The source mapping's `skills:` says what each instruction means, e.g.
`walk forward: {measure: forward_m, target: 2.0}`. Two measures exist:

- forward_m: metres travelled along the heading the robot had at the first step,
  (x_t - x_0) cos(yaw_0) + (y_t - y_0) sin(yaw_0); walking backwards is negative.
- yaw_rad: yaw turned since the first step, unwrapped (each step's change is wrapped
  to [-pi, pi) before summing, so crossing +-pi does not count as a full turn) and signed
  (left, counter-clockwise, is positive).

`progress_raw` is the measure itself; `progress` divides it by the skill's signed
target and clips to [0, 1], so turning right toward a target of -3 rad counts up and
turning the wrong way counts as 0. The quality scores and the referee's ground truth
both use these functions.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import polars as pl

from foundations.schema import POSE

MEASURES = ("forward_m", "yaw_rad")
TWO_PI = 2 * math.pi


def instruction_key(expr: pl.Expr) -> pl.Expr:
    """Instructions match skills case- and whitespace-insensitively ("Walk  forward " == "walk forward")."""
    return expr.str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", " ")


def _field(spec: Any, name: str) -> Any:
    """A skill's field, whether the skill is a YAML dict or a parsed object (foundations.ingest SkillSpec)."""
    return spec.get(name) if isinstance(spec, Mapping) else getattr(spec, name, None)


def skill_table(skills: Mapping[str, Any]) -> pl.DataFrame:
    """The `skills:` mapping as a table (skill, measure, target, key); refuses unknown measures or zero targets.

    Each skill is {measure, target} as a dict or as an object with those attributes.
    """
    problems = []
    measures = {name: _field(spec, "measure") for name, spec in skills.items()}
    targets = {name: _field(spec, "target") for name, spec in skills.items()}
    for name in skills:
        if measures[name] not in MEASURES:
            problems.append(f"skill {name!r} has measure {measures[name]!r}; use one of {', '.join(MEASURES)}")
        target = targets[name]
        if isinstance(target, bool) or not isinstance(target, (int, float)) or target == 0 or not math.isfinite(target):
            problems.append(f"skill {name!r} needs a non-zero finite numeric target, got {target!r}")
    if problems:
        raise ValueError("invalid skills mapping: " + "; ".join(problems))
    return pl.DataFrame(
        {"skill": list(skills), "measure": list(measures.values()), "target": [float(t) for t in targets.values()]},
        schema={"skill": pl.String, "measure": pl.String, "target": pl.Float64},
    ).with_columns(key=instruction_key(pl.col("skill")))


def wrap_angle(expr: pl.Expr) -> pl.Expr:
    """Angle wrapped to [-pi, pi)."""
    return expr - TWO_PI * ((expr + math.pi) / TWO_PI).floor()


def _note(skills: pl.DataFrame) -> pl.Expr:
    known = ", ".join(sorted(skills.get_column("skill")))
    return (
        pl.when(pl.col("language_instruction").is_null())
        .then(pl.lit("no language_instruction: progress cannot be measured"))
        .when(pl.col("measure").is_null())
        .then(pl.concat_str([pl.lit("unknown instruction '"), pl.col("language_instruction"),
                             pl.lit(f"': the skills mapping defines {known}")]))
    )


def step_progress(df: pl.DataFrame, skills: Mapping[str, Any]) -> pl.DataFrame:
    """Cumulative progress at every step: episode_id, step, measure, target, progress_raw, progress_note.

    Rows come back sorted by (episode_id, step). progress_raw is null where the
    instruction is unknown or the pose is missing; progress_note says why.
    """
    table = skill_table(skills)
    ep = "episode_id"
    base = df.lazy().select(ep, "step", "language_instruction", *([POSE] if POSE in df.columns else []))
    if POSE not in df.columns:
        return (
            base.select(ep, "step", measure=pl.lit(None, pl.String), target=pl.lit(None, pl.Float64),
                        progress_raw=pl.lit(None, pl.Float64),
                        progress_note=pl.lit(f"no {POSE} column: progress cannot be measured"))
            .sort(ep, "step").collect()
        )
    pose = pl.col(POSE)
    x, y, yaw = (pose.list.get(i, null_on_oob=True).cast(pl.Float64) for i in range(3))
    forward = ((pl.col("x") - pl.col("x").first()) * pl.col("yaw").first().cos()
               + (pl.col("y") - pl.col("y").first()) * pl.col("yaw").first().sin()).over(ep)
    turned = wrap_angle(pl.col("yaw").diff().fill_null(0.0)).cum_sum().over(ep)
    raw = (pl.when(pl.col("measure") == "forward_m").then(forward)
           .when(pl.col("measure") == "yaw_rad").then(turned))
    return (
        base.with_columns(x=x, y=y, yaw=yaw, key=instruction_key(pl.col("language_instruction")))
        .join(table.lazy().select("key", "measure", "target"), on="key", how="left")
        .sort(ep, "step")  # after the join, which does not keep row order; first() and diff() need it
        .with_columns(progress_raw=raw)
        .with_columns(progress_note=_note(table).otherwise(
            pl.when(pl.col("progress_raw").is_null())
            .then(pl.lit(f"{POSE} is missing or shorter than [x, y, yaw] at this step or the first"))))
        .select(ep, "step", "measure", "target", "progress_raw", "progress_note")
        .collect()
    )


def episode_progress(df: pl.DataFrame, skills: Mapping[str, Any]) -> pl.DataFrame:
    """Progress of each episode at its last step.

    Columns: episode_id, language_instruction, measure, target, progress_raw (metres or
    radians, signed), progress (progress_raw / target clipped to [0, 1]; null when it
    cannot be measured) and progress_note (null, or why progress is null).
    """
    steps = step_progress(df, skills)
    instructions = df.group_by("episode_id").agg(pl.col("language_instruction").drop_nulls().first())
    return (
        steps.group_by("episode_id", maintain_order=True)
        .agg(pl.col("measure", "target", "progress_raw", "progress_note").last())
        .join(instructions, on="episode_id", how="left")
        .with_columns(progress=(pl.col("progress_raw") / pl.col("target")).clip(0.0, 1.0))
        .select("episode_id", "language_instruction", "measure", "target", "progress_raw", "progress",
                "progress_note")
    )
