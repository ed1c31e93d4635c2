"""Per-episode quality scores: named components in [0, 1] (higher is better) and their weighted mean.

Everything robot-specific comes from the robot profile (`foundations.profile`): the action
bounds, where the joint velocities, the base pose and the end effector sit, and what each
instruction's progress measure is. Components (columns of `score_episodes`):

- progress: how far the episode got toward its instruction (`foundations.progress`): the
  skill's measure (metres along the initial heading, unwrapped yaw, share of the distance to
  a target closed, bearing swept) divided by its target and clipped to [0, 1]. Null when the
  instruction is unknown; `progress_note` says why.
- smoothness: mean of the robust jerk scores that can be measured, each 1 / (1 + (j / scale)^2)
  of a median over the episode's steps (a median, so a few spikes do not dominate):
  action jerk = RMS over action dimensions of the second difference a[t] - 2 a[t-1] + a[t-2]
  (in half action ranges per step^2), and, when the profile declares `joint_velocity`, joint
  jerk = RMS of the second difference of the joint velocities divided by dt^2 (rad/s^3).
  Without joint velocities the action term stands alone.
- idle: 1 - idle_fraction. A step is idle when every command is near zero (|a| below
  IDLE_ACTION half action ranges) and the robot is essentially still by what the profile
  declares: base speed < IDLE_SPEED and |yaw rate| < IDLE_YAW_RATE when it has a base pose,
  else end-effector speed < IDLE_EE_SPEED when it has an end effector; and every joint speed
  < IDLE_JOINT_SPEED when it has joint velocities. Steps after the episode first reached its
  skill's target are never idle: holding still at the goal is the task done, not idling.
- saturation: 1 - saturated_fraction, the share of action values within SATURATION_MARGIN of
  the action range (the profile's action_bounds) from a bound.
- completeness: 0 when the episode ended terminal (the environment ended it as a failure, e.g.
  a fall); otherwise its length relative to the nominal length, min(1, n_steps / nominal).
  The nominal length is `nominal_steps` when given, else the longest episode with the same
  instruction in the table (pass `nominal_steps` for scores that do not depend on what else
  is in the table).

- on_task, specificity, efficiency, hesitation, consistency: components that look at the
  episode over time, over one-second windows so that noisy, drifting odometry and jittered stamps
  do not move them (`quality.temporal` documents each): how much of the time the robot worked
  at the instruction, whether it did the instructed skill rather than another declared one, how
  much progress it made per unit of actuation, whether it paused mid-task, and whether its motion
  went the instructed way.

quality_score combines the components. By default it is the estimated probability that a competent
operator (expert or medium) produced the episode, from boosted trees over the components that are
monotone increasing in each (`quality.score_model`: why trees, how they were fitted, on which
simulated fleets; `benchmarks/fit_score.py` refits them). A run that passes `weights` gets their
weighted mean instead: the components that are not null, each weight overriding DEFAULT_WEIGHTS, a
weight of 0 dropping a component. DEFAULT_WEIGHTS were fitted by a rank search on the first six tuning
fleets (`benchmarks/fit_score.py --weights`); hesitation, saturation and progress weigh most, smoothness
little, because it rates a smooth operator doing the wrong task as good, and efficiency little, because
a noisy but competent operator spends more actuation for the same progress.

Every score comes with `lowest_component`, the component that lowered it most: the one whose raise to 1
(the others as they are) would raise the score most, which for a weighted mean is the largest
weight x (1 - value); and a short `explanation` naming it, its value, the score it would then have and
what a low value means. Each episode's leading and trailing idle steps
(`quality.temporal.idle_trims`) are recorded beside its scores: idle_start_steps, idle_start_s,
idle_end_steps, idle_end_s.

The jerk scales were calibrated on the simulated quadruped fleet (20 Hz torque commands in
[-1, 1]): action jerk of a 1 Hz gait at amplitude 0.6 is about 0.04 and of uniform random
commands about 1.4; joint jerk of stable gaits 50 to 1000 rad/s^3, of random flailing about
2900. A scale is the jerk that scores 0.5; commands on another range or rate shift these.
"""
from __future__ import annotations

import io
import math
from typing import Mapping

import numpy as np
import polars as pl

from foundations.geometry import wrap_angle
from foundations.profile import RobotProfile
from foundations.progress import episode_progress, profile_slice, step_progress, vector_norm
from foundations.schema import ACTION
from quality.score_model import load_score_model
from quality.temporal import (
    IDLE_ACTION, IDLE_EE_SPEED, IDLE_JOINT_SPEED, IDLE_SPEED, IDLE_YAW_RATE, TEMPORAL_COMPONENTS, idle_trims,
    still_steps, temporal_components,
)

__all__ = [
    "COMPONENTS", "DEFAULT_WEIGHTS", "HINTS", "TRIM_COLUMNS", "combine", "episode_progress", "idle_trims", "lowest_scores",
    "score_episodes", "score_histogram_png", "step_progress",
]

COMPONENTS = ("progress", "smoothness", "completeness", "idle", "saturation", *TEMPORAL_COMPONENTS)
DEFAULT_WEIGHTS: dict[str, float] = {
    "progress": 0.14, "smoothness": 0.04, "completeness": 0.07, "idle": 0.08, "saturation": 0.2,
    "on_task": 0.11, "specificity": 0.05, "efficiency": 0.02, "hesitation": 0.2, "consistency": 0.09,
}
# What a low value of each component means, for the explanation of a score.
HINTS: dict[str, str] = {
    "progress": "fell short of the instruction's target",
    "smoothness": "jerky commands or joint motion",
    "completeness": "ended early or in a failure",
    "idle": "stood idle with near-zero commands",
    "saturation": "commands pinned at their bounds",
    "on_task": "most of the time not moving toward the instruction",
    "specificity": "did another declared skill more than the instructed one",
    "efficiency": "much actuation for little progress",
    "hesitation": "paused in the middle of the task",
    "consistency": "moved back and forth or off the instructed direction",
}
TRIM_COLUMNS = ("idle_start_steps", "idle_start_s", "idle_end_steps", "idle_end_s")
ACTION_JERK_SCALE = 0.3  # half action ranges per step^2 (see the module docstring)
JOINT_JERK_SCALE = 1500.0  # rad/s^3 (see the module docstring)
# The stillness thresholds (IDLE_*) live in quality.temporal, shared with the time-aware components.
SATURATION_MARGIN = 0.01  # fraction of the action range

_EP = "episode_id"


def _weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    """None (the model combines the components), or DEFAULT_WEIGHTS overridden by `weights`, checked."""
    if weights is None:
        return None
    merged = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = sorted(set(merged) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown score components {unknown}; weights may name {', '.join(COMPONENTS)}")
    bad = {k: v for k, v in merged.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
    if bad or sum(merged.values()) <= 0:
        raise ValueError(f"weights must be finite and >= 0 with a positive sum, got {merged}")
    return {k: float(v) for k, v in merged.items()}


def _rms(expr: pl.Expr) -> pl.Expr:
    """Root mean square over the elements of a list expression."""
    return expr.list.eval(pl.element().cast(pl.Float64).pow(2)).list.mean().sqrt()


def _second_difference(col: pl.Expr) -> pl.Expr:
    return (col - 2 * col.shift(1) + col.shift(2)).over(_EP)


def _step_measures(df: pl.DataFrame, profile: RobotProfile, progress: pl.DataFrame) -> pl.LazyFrame:
    """Per-step jerk, stillness and saturation, sorted by (episode_id, step); `progress` is step_progress's."""
    low, high = profile.action_bounds
    margin = SATURATION_MARGIN * (high - low)
    half_range = (high - low) / 2
    action = pl.col(ACTION)
    dt = pl.col("timestamp").diff().over(_EP)
    saturated = action.list.eval(
        ((pl.element() >= high - margin) | (pl.element() <= low + margin)).cast(pl.Float64)).list.mean()
    command_max = action.list.eval(pl.element().abs() / half_range).list.max()
    columns = [
        (_rms(_second_difference(action)) / half_range).alias("action_jerk"),
        saturated.alias("saturated"),
        command_max.alias("command_max"),
    ]
    still = [pl.col("command_max") < IDLE_ACTION]
    if profile.joint_velocity is not None:
        qd = profile_slice(profile.joint_velocity)
        columns += [
            (_rms(_second_difference(qd)) / dt.median().over(_EP).pow(2)).alias("joint_jerk"),
            qd.list.eval(pl.element().abs()).list.max().alias("joint_speed"),
        ]
        still.append(pl.col("joint_speed") < IDLE_JOINT_SPEED)
    else:
        columns.append(pl.lit(None, pl.Float64).alias("joint_jerk"))
    if profile.base_pose is not None:
        x, y, yaw = (profile_slice(profile.base_pose, i).diff().over(_EP) for i in range(3))
        columns += [((x.pow(2) + y.pow(2)).sqrt() / dt).alias("speed"), (wrap_angle(yaw).abs() / dt).alias("yaw_rate")]
        still += [pl.col("speed") < IDLE_SPEED, pl.col("yaw_rate") < IDLE_YAW_RATE]
    elif profile.end_effector is not None:
        ee = profile_slice(profile.end_effector)
        columns.append((vector_norm((ee - ee.shift(1)).over(_EP)) / dt).alias("ee_speed"))
        still.append(pl.col("ee_speed") < IDLE_EE_SPEED)
    reached = (pl.col("progress_raw") / pl.col("target") >= 1).fill_null(False).cast(pl.Int8).cum_max().over(_EP)
    return (
        df.lazy()
        .join(progress.lazy().select(_EP, "step", "progress_raw", "target"), on=[_EP, "step"], how="left")
        .sort(_EP, "step")
        .with_columns(columns)
        # The first step has no motion to measure; it counts as idle only if the next step does.
        .with_columns(idle=pl.all_horizontal(still).cast(pl.Float64).backward_fill(1).over(_EP))
        .with_columns(idle=pl.when(reached == 1).then(0.0).otherwise(pl.col("idle")))
    )


def _robust(col: str, scale: float) -> pl.Expr:
    return 1.0 / (1.0 + (pl.col(col) / scale).pow(2))


def score_episodes(
    df: pl.DataFrame,
    profile: RobotProfile,
    weights: Mapping[str, float] | None = None,
    *,
    nominal_steps: int | None = None,
) -> pl.DataFrame:
    """Score every episode of an (accepted) episode table; one row per episode_id, sorted by it.

    Columns: episode_id, language_instruction, n_steps, the COMPONENTS (each in [0, 1],
    higher is better; see the module docstring), quality_score, lowest_component, explanation,
    and the raw measures behind them: progress_raw (the skill's measure, signed), progress_note
    (why progress is null, else null), action_jerk, joint_jerk (medians; joint_jerk null without
    declared joint velocities), idle_fraction, saturated_fraction, terminal, forward_progress,
    other_progress, effort, idle_inside (quality.temporal), and the idle trims
    idle_start_steps, idle_start_s, idle_end_steps, idle_end_s.

    profile: the robot profile of the table's source (action bounds, declared slices, skills).
    weights: per-component weights overriding DEFAULT_WEIGHTS.
    nominal_steps: intended episode length for completeness (default: see module docstring).
    """
    if not isinstance(profile, RobotProfile):
        raise TypeError(f"profile must be a foundations.profile.RobotProfile (load_profile(name)), got {type(profile).__name__}")
    w = _weights(weights)
    if nominal_steps is not None and nominal_steps < 1:
        raise ValueError(f"nominal_steps must be >= 1, got {nominal_steps}")
    if df.is_empty():
        return _empty_scores()
    repeated = df.filter(pl.struct(_EP, "step").is_duplicated()).select(_EP, "step").unique().head(3)
    if repeated.height:
        raise ValueError(f"the episode table repeats (episode_id, step) rows, e.g. {repeated.rows()}; "
                         "score validated episodes (quality.validation rejects these)")
    progress = step_progress(df, profile)
    steps = _step_measures(df, profile, progress)
    still = still_steps(df, profile)
    over_time = temporal_components(df, profile, steps=still)
    trims = idle_trims(df, profile, steps=still).drop("n_steps")
    per_episode = (
        steps.group_by(_EP)
        .agg(
            n_steps=pl.len().cast(pl.Int64),
            action_jerk=pl.col("action_jerk").median(),
            joint_jerk=pl.col("joint_jerk").median(),
            idle_fraction=pl.col("idle").mean(),
            saturated_fraction=pl.col("saturated").mean(),
            terminal=pl.col("is_terminal").any(),
        )
        .join(episode_progress(df, profile, steps=progress).lazy(), on=_EP, how="left")
        .with_columns(
            nominal=pl.lit(nominal_steps, pl.Int64) if nominal_steps is not None
            else pl.col("n_steps").max().over("language_instruction")
        )
    )
    smooth_terms = pl.concat_list(_robust("action_jerk", ACTION_JERK_SCALE),
                                  _robust("joint_jerk", JOINT_JERK_SCALE)).list.drop_nulls()
    scored = per_episode.with_columns(
        smoothness=pl.when(smooth_terms.list.len() > 0).then(smooth_terms.list.mean()),
        idle=1.0 - pl.col("idle_fraction"),
        saturation=1.0 - pl.col("saturated_fraction"),
        completeness=pl.when(pl.col("terminal")).then(0.0)
        .otherwise((pl.col("n_steps") / pl.col("nominal")).clip(0.0, 1.0)),
    )
    components = scored.join(over_time.lazy(), on=_EP, how="left").collect().with_columns(
        pl.col(*COMPONENTS).cast(pl.Float64))
    x = components.select(COMPONENTS).to_numpy().astype(np.float64)  # null -> NaN
    ranking = _ranking(x, w)
    return (
        components.with_columns(quality_score=pl.Series(_score(ranking, w), dtype=pl.Float64).fill_nan(None))
        .hstack(_explain(x, w, ranking))
        .join(trims, on=_EP, how="left")
        .select(_EP, "language_instruction", "n_steps", *COMPONENTS, "quality_score", "lowest_component",
                "explanation", "progress_raw", "progress_note", "action_jerk", "joint_jerk", "idle_fraction",
                "saturated_fraction", "terminal", *_TEMPORAL_RAW, *TRIM_COLUMNS)
        .with_columns(pl.col(*COMPONENTS, "quality_score", "action_jerk", "joint_jerk", "idle_fraction",
                             "saturated_fraction").cast(pl.Float64))
        .sort(_EP)
    )


def combine(x: np.ndarray, weights: Mapping[str, float] | None = None) -> np.ndarray:
    """quality_score of each row of a components matrix (columns in COMPONENTS order, NaN for null):
    the score model's probability, or with `weights` (as checked by score_episodes) their weighted mean of
    the components that are not null (NaN when none is)."""
    return _score(_ranking(x, weights), weights)


def _score(ranking: np.ndarray, weights: Mapping[str, float] | None) -> np.ndarray:
    """The score from what `_ranking` gives: the model's log-odds as a probability; a weighted mean as it is."""
    return load_score_model().to_probability(ranking) if weights is None else ranking


def _ranking(x: np.ndarray, weights: Mapping[str, float] | None) -> np.ndarray:
    """What orders the scores without saturating: the model's log-odds, or the weighted mean itself."""
    if weights is None:
        return load_score_model().log_odds(x)
    weighted, total = np.zeros(len(x)), np.zeros(len(x))
    # Summed in COMPONENTS order by plain additions: published versions are content-addressed, so the
    # last bit of a score must not vary between runs.
    for i, c in enumerate(COMPONENTS):
        present = ~np.isnan(x[:, i])
        weighted = weighted + np.where(present, x[:, i] * weights[c], 0.0)
        total = total + np.where(present, weights[c], 0.0)
    return np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)


_TEMPORAL_RAW = ("forward_progress", "other_progress", "effort", "idle_inside")


def _explain(x: np.ndarray, w: dict[str, float] | None, base: np.ndarray) -> pl.DataFrame:
    """lowest_component: the component whose raise to 1, the others as they are, would raise the score
    most (the first in COMPONENTS on ties; null when none is measured); its explanation gives the score
    it would then have. Compared in log-odds (`base`: the episodes' own `_ranking`), where a model's
    near-0 and near-1 scores still differ."""
    raised_rank = np.full(x.shape, -np.inf)
    raised_score = np.full(x.shape, np.nan)
    for i in range(x.shape[1]):
        present = ~np.isnan(x[:, i])
        raised = x.copy()
        raised[present, i] = 1.0
        rank = _ranking(raised, w)
        raised_rank[:, i] = np.where(present, rank, -np.inf)
        raised_score[:, i] = _score(rank, w)
    rows = np.arange(len(x))
    lowest = raised_rank.argmax(axis=1)
    measured = np.isfinite(raised_rank[rows, lowest]) & np.isfinite(base)
    gains = np.where(measured, raised_rank[rows, lowest] - base, np.nan)
    return pl.DataFrame({
        "lowest_component": pl.Series(np.where(measured, np.array(COMPONENTS, dtype=object)[lowest], None),
                                      dtype=pl.String),
        "_value": np.where(measured, x[rows, lowest], np.nan),
        "_then": np.where(measured, raised_score[rows, lowest], np.nan), "_gain": gains,
    }).fill_nan(None).select(
        "lowest_component",
        explanation=pl.when(pl.col("_gain") <= 1e-9).then(pl.lit("no single component would raise the score"))
        .otherwise(pl.concat_str([
            pl.col("lowest_component"), pl.lit(" "), pl.col("_value").round(2).cast(pl.String),
            pl.lit(" (at 1 the score would be "), pl.col("_then").round(2).cast(pl.String), pl.lit("): "),
            pl.col("lowest_component").replace_strict(HINTS, default=None)])),
    )


def lowest_scores(scores: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The `n` lowest-scoring episodes with their score and why: episode_id, language_instruction
    (when present), quality_score, lowest_component, explanation. For cards and asset metadata."""
    cols = [c for c in (_EP, "language_instruction", "quality_score", "lowest_component", "explanation")
            if c in scores.columns]
    if "quality_score" not in scores.columns or "explanation" not in scores.columns:
        return pl.DataFrame()
    return (scores.filter(pl.col("quality_score").is_not_null()).sort("quality_score", _EP).head(n)
            .select(cols).with_columns(pl.col("quality_score").round(3)))


def _empty_scores() -> pl.DataFrame:
    schema = {_EP: pl.String, "language_instruction": pl.String, "n_steps": pl.Int64,
              **{c: pl.Float64 for c in COMPONENTS}, "quality_score": pl.Float64, "lowest_component": pl.String,
              "explanation": pl.String, "progress_raw": pl.Float64, "progress_note": pl.String,
              "action_jerk": pl.Float64, "joint_jerk": pl.Float64, "idle_fraction": pl.Float64,
              "saturated_fraction": pl.Float64, "terminal": pl.Boolean, **{c: pl.Float64 for c in _TEMPORAL_RAW},
              "idle_start_steps": pl.Int64, "idle_start_s": pl.Float64, "idle_end_steps": pl.Int64,
              "idle_end_s": pl.Float64}
    return pl.DataFrame(schema=schema)


def score_histogram_png(scores: pl.DataFrame) -> bytes:
    """PNG of quality_score and each component as small-multiple histograms over [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    labels = {"quality_score": "quality score", "idle": "idle (1 - idle share)",
              "saturation": "saturation (1 - saturated share)"}
    fig = Figure(figsize=(14, 9.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 4)
    bins = [i / 20 for i in range(21)]
    for ax in axes.flat[len(COMPONENTS) + 1:]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, ["quality_score", *COMPONENTS]):
        column = scores.get_column(name).drop_nulls() if name in scores.columns else pl.Series([], dtype=pl.Float64)
        missing = scores.height - column.len()
        ax.hist(column.to_numpy(), bins=bins, color="tab:blue" if name == "quality_score" else "tab:gray",
                edgecolor="white")
        notes = [f"median {column.median():.2f}"] if column.len() else []
        notes += [f"{missing} not measured"] if missing else []
        ax.set_title(labels.get(name, name) + (f"\n({', '.join(notes)})" if notes else ""), fontsize=10,
                     fontweight="bold" if name == "quality_score" else "normal")
        ax.set_xlim(0, 1)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("score (higher is better)", fontsize=9)
        ax.set_ylabel("episodes", fontsize=9)
    fig.suptitle(f"Episode quality scores ({scores.height} episodes)", fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
