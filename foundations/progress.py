"""True progress toward an episode's instruction, measured from what the robot profile declares.

A robot profile (`foundations.profile`, `datasets/robots/<name>.yaml`) says where the base
pose, the end effector and the target sit in the canonical features, and what each
instruction means, as `<instruction>: {measure: forward_m, target: 2.0}`. The measures
(`foundations.profile.MEASURES`), each cumulative from the episode's first step:

- forward_m (base_pose [x, y, yaw]): metres travelled along the heading the robot had at the
  first step, (x_t - x_0) cos(yaw_0) + (y_t - y_0) sin(yaw_0); walking backwards is negative.
- yaw_rad (base_pose): yaw turned since the first step, unwrapped (each step's change is
  wrapped to [-pi, pi) before summing, so crossing +-pi does not count as a full turn) and
  signed (left, counter-clockwise, positive).
- reach_fraction (end_effector, target): 1 - d_t / d_0 with d = |end effector - target| over
  the declared 2 or 3 dimensions: 1 reached, 0 no closer, negative moved away. Null when the
  end effector starts on the target (d_0 = 0: there is nothing to close).
- bearing_rad (end_effector): the end effector's bearing atan2(y, x) around the frame origin
  (the arm's base) turned since the first step, unwrapped like yaw, left positive.

`progress_raw` is the measure itself; `progress` divides it by the skill's signed target and
clips to [0, 1], so turning right toward a target of -3 rad counts up and turning the wrong way
counts as 0. The quality scores and the referee (its rendering and its ground truth) use these
functions, and `profile_slice` is how every consumer reads a declared slice.
"""
from __future__ import annotations

import polars as pl

from foundations.geometry import wrap_angle
from foundations.profile import MEASURES, RobotProfile, Slice

_EP = "episode_id"


def profile_slice(s: Slice, dim: int | None = None) -> pl.Expr:
    """A declared slice of a list feature as Float64: the list of its dimensions, or dimension `dim` of it.

    The list is null at steps whose feature is null or shorter than `start + count` (with
    `count` omitted: not longer than `start`); one dimension is null where it is absent.
    """
    col = pl.col(s.feature)
    if dim is not None:
        if dim < 0 or (s.count is not None and dim >= s.count):
            raise ValueError(f"dimension {dim} is outside the slice {s.feature}[{s.start}:+{s.count}]")
        return col.list.get(s.start + dim, null_on_oob=True).cast(pl.Float64)
    need = s.start + (s.count or 1)
    return pl.when(col.list.len() >= need).then(col.list.slice(s.start, s.count).cast(pl.List(pl.Float64)))


def vector_norm(vector: pl.Expr) -> pl.Expr:
    """Euclidean length of a list expression (null where the list is null)."""
    # List arithmetic, not list.eval: polars 2.1 returns wrong values for list.eval(...).first()
    # inside .over() on a sorted LazyFrame (its slice pushdown), which reach_fraction needs.
    return (vector * vector).list.sum().sqrt().cast(pl.Float64)


def distance_to_target(profile: RobotProfile) -> pl.Expr:
    """|end effector - target| in metres at each step; needs both declared with the same dimensions."""
    ee, target = profile.end_effector, profile.target
    if ee is None or target is None:
        raise ValueError(f"robot profile {profile.name!r} must declare end_effector and target to measure a distance")
    if ee.count is not None and target.count is not None and ee.count != target.count:
        raise ValueError(f"robot profile {profile.name!r}: end_effector has {ee.count} dimensions but target "
                         f"{target.count}; declare the same count for both")
    return vector_norm(profile_slice(ee) - profile_slice(target))


def unwrapped(angle: pl.Expr) -> pl.Expr:
    """Angle change since the first row, unwrapped (use `.over(episode)`): the sum of the wrapped
    step changes; null from the first missing value on, so a gap never reads as "no turn"."""
    change = pl.when(pl.int_range(pl.len()) == 0).then(0.0).otherwise(wrap_angle(angle.diff()))
    return pl.when(change.is_null().cum_sum() == 0).then(change.cum_sum())


def instruction_key(expr: pl.Expr) -> pl.Expr:
    """Instructions match skills case- and whitespace-insensitively ("Pick  UP " == "pick up")."""
    return expr.str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", " ")


def skill_table(profile: RobotProfile) -> pl.DataFrame:
    """The profile's skills as a table: skill, measure, target, key (the matching form of the instruction)."""
    skills = profile.skills
    return pl.DataFrame(
        {"skill": list(skills), "measure": [s.measure for s in skills.values()],
         "target": [float(s.target) for s in skills.values()]},
        schema={"skill": pl.String, "measure": pl.String, "target": pl.Float64},
    ).with_columns(key=instruction_key(pl.col("skill")))


def with_skill(frame: pl.LazyFrame, profile: RobotProfile, instruction: str = "language_instruction") -> pl.LazyFrame:
    """`frame` with the `measure` and `target` of the skill its instruction names (null when none does).

    Row order is not kept (a join); sort afterwards where order matters.
    """
    table = skill_table(profile).lazy().select("key", "measure", "target")
    return (frame.with_columns(pl.col(instruction).pipe(instruction_key).alias("_skill_key"))
            .join(table, left_on="_skill_key", right_on="key", how="left").drop("_skill_key"))


def _declared_features(profile: RobotProfile, measure: str) -> list[str]:
    return sorted({getattr(profile, name).feature for name in MEASURES[measure]})


def measure_values(profile: RobotProfile, columns: list[str] | None = None, episode: str = _EP) -> dict[str, pl.Expr]:
    """Cumulative value of each measure the profile's skills use, per step, as expressions over `episode`.

    The frame they run on must be sorted by (episode, step). Measures whose features are not
    among `columns` (when given) are left out.
    """
    used = {s.measure for s in profile.skills.values()}
    if columns is not None:
        used = {m for m in used if all(f in columns for f in _declared_features(profile, m))}
    exprs: dict[str, pl.Expr] = {}
    if used & {"forward_m", "yaw_rad"}:
        x, y, yaw = (profile_slice(profile.base_pose, i) for i in range(3))
        exprs["forward_m"] = (x - x.first()) * yaw.first().cos() + (y - y.first()) * yaw.first().sin()
        exprs["yaw_rad"] = unwrapped(yaw)
    if "reach_fraction" in used:
        d = distance_to_target(profile)
        exprs["reach_fraction"] = pl.when(d.first() > 0).then(1.0 - d / d.first())
    if "bearing_rad" in used:
        exprs["bearing_rad"] = unwrapped(pl.arctan2(profile_slice(profile.end_effector, 1),
                                                    profile_slice(profile.end_effector, 0)))
    return {m: exprs[m].over(episode) for m in sorted(used)}


def measure_of_skill(profile: RobotProfile, columns: list[str] | None = None, episode: str = _EP) -> pl.Expr:
    """The cumulative measure of each row's skill (its `measure` column), null for unknown skills."""
    chain = pl.lit(None, pl.Float64)
    for measure, value in measure_values(profile, columns, episode).items():
        chain = pl.when(pl.col("measure") == measure).then(value).otherwise(chain)
    return chain


# Which steps a null measure comes from: angles are summed from the start, the others compare with the first step.
_WHEN_NULL = {
    "forward_m": "at this step or the first",
    "yaw_rad": "at this step or an earlier one",
    "reach_fraction": "at this step or the first, or the end effector starts on the target",
    "bearing_rad": "at this step or an earlier one",
}


def _note(profile: RobotProfile, columns: list[str]) -> pl.Expr:
    """Why progress_raw is null at a row."""
    known = ", ".join(sorted(profile.skills))
    note = (
        pl.when(pl.col("language_instruction").is_null())
        .then(pl.lit("no language_instruction: progress cannot be measured"))
        .when(pl.col("measure").is_null())
        .then(pl.concat_str([pl.lit("unknown instruction '"), pl.col("language_instruction"),
                             pl.lit(f"': robot profile {profile.name!r} defines {known}")]))
    )
    for measure in sorted({s.measure for s in profile.skills.values()}):
        features = _declared_features(profile, measure)
        absent = [f for f in features if f not in columns]
        what = ", ".join(f"{name} ({getattr(profile, name).feature})" for name in MEASURES[measure])
        text = (f"no {', '.join(absent)} column: {measure} cannot be measured" if absent else
                f"{what} missing or shorter than declared {_WHEN_NULL[measure]}")
        note = note.when((pl.col("measure") == measure) & pl.col("progress_raw").is_null()).then(pl.lit(text))
    return note


def step_progress(df: pl.DataFrame, profile: RobotProfile) -> pl.DataFrame:
    """Cumulative progress at every step: episode_id, step, measure, target, progress_raw, progress_note.

    Rows come back sorted by (episode_id, step). progress_raw is null where the instruction
    is unknown or the declared features are missing; progress_note says why.
    """
    features = sorted(profile.features & set(df.columns))
    return (
        with_skill(df.lazy().select(_EP, "step", "language_instruction", *features), profile)
        .sort(_EP, "step")  # after the join, which does not keep row order; first() and diff() need it
        .with_columns(progress_raw=measure_of_skill(profile, df.columns))
        .with_columns(progress_note=_note(profile, df.columns))
        .select(_EP, "step", "measure", "target", "progress_raw", "progress_note")
        .collect()
    )


def episode_progress(df: pl.DataFrame, profile: RobotProfile, *, steps: pl.DataFrame | None = None) -> pl.DataFrame:
    """Progress of each episode at its last step.

    Columns: episode_id, language_instruction, measure, target, progress_raw (the measure:
    metres, radians or a share of the distance, signed), progress (progress_raw / target
    clipped to [0, 1]; null when it cannot be measured) and progress_note (null, or why
    progress is null). `steps`: `step_progress(df, profile)` when the caller has it already.
    """
    steps = step_progress(df, profile) if steps is None else steps
    instructions = df.group_by(_EP).agg(pl.col("language_instruction").drop_nulls().first())
    return (
        steps.group_by(_EP, maintain_order=True)
        .agg(pl.col("measure", "target", "progress_raw", "progress_note").last())
        .join(instructions, on=_EP, how="left")
        .with_columns(progress=(pl.col("progress_raw") / pl.col("target")).clip(0.0, 1.0))
        .select(_EP, "language_instruction", "measure", "target", "progress_raw", "progress", "progress_note")
    )


def progress_rewards(df: pl.DataFrame, profile: RobotProfile) -> pl.DataFrame:
    """Per-step reward from the robot's own measured progress: episode_id, step, progress_reward (Float32).

    progress_reward at step t is the change of the measure since step t-1 divided by the skill's
    signed target, (progress_raw_t - progress_raw_(t-1)) / target; at an episode's first step it is
    progress_raw there (0: every measure counts from the first step). An episode's rewards add up to its
    final progress_raw / target, unclipped: moving the wrong way earns negative reward. Aligned like the
    referee's reward (the change that arrives at step t). Null where either step's measure is null or NaN (unknown
    instruction, missing or short features; `step_progress`'s progress_note says why) or the target is 0:
    never invented.
    """
    raw = pl.col("progress_raw").fill_nan(None)  # a NaN pose measures nothing
    change = pl.when(pl.int_range(pl.len()).over(_EP) == 0).then(raw).otherwise(raw - raw.shift(1).over(_EP))
    reward = pl.when(pl.col("target") != 0).then(change / pl.col("target"))
    return step_progress(df, profile).select(_EP, pl.col("step").cast(pl.Int32), reward.cast(pl.Float32).alias("progress_reward"))
