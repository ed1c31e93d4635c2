"""Score components that look at an episode over time, and its leading and trailing idle steps.

A curator watching a robot sees within seconds whether it works at the instruction, at another
task, feebly, or waits between bursts. These components measure that from what the robot
profile declares, robust to sensor noise and jittered stamps: positions are averaged over
windows of WINDOW_S seconds (by timestamp) and compared window to window, never step to step.
Progress on a skill is its measure (`foundations.progress`) divided by its signed target, so 1
is the skill done and positive is toward it. All in [0, 1], higher is better, per episode:

- on_task: the mean over window-to-window changes of min(1, progress on the instructed skill in
  that change / the pace that counts as working at it), negative counting 0, and 1 from the
  change that reached the target on (holding at the goal is the task done). The pace is
  ON_TASK_PACE of the pace that reaches the target in a nominal episode (the profile's
  nominal_episode_s, else the episode's own length): an operator at half that pace scores 0.5.
- specificity: A_i / (A_i + A_o + FLOOR), where A_i is the summed forward progress
  (positive window changes) on the instructed skill and A_o the largest such sum on any other
  declared skill of the profile that measures something else or the other way: doing another
  task well is not quality. The floor makes a robot that does nothing score near 0, not 0.5.
- efficiency: A_i / (A_i + effort + FLOOR), effort = the mean RMS command (in half action ranges)
  times the episode's length in nominal episodes: progress per unit of actuation, saturated, so
  flailing or working at the wrong task scores low and the expert's economical gait high.
- hesitation: 1 - the share of still steps between the first and the last moving step (before
  the target was reached): pauses in the middle of the task, not waiting at its ends (see
  `idle_trims` for those). 0 when the robot never moved (no window with mostly moving steps).
- consistency: the share of the motion along the instruction that goes the instructed way,
  over window changes before the target was reached: for forward_m, the base's displacement
  along its first heading over its path length (wandering sideways or back counts against it);
  for the other measures, the instructed measure's forward changes over all its changes (turning
  or sweeping back and forth, approaching and leaving the target). FLOOR in the
  denominator makes noise alone score near 0.

A step is *still* when most steps within STILL_S around it (a centred majority vote, so that
isolated flips of noise are voted down and a pause's edges stay where they are: a moving average
blurred each edge inward by up to STILL_S / 2) are still by what the profile declares: the base
moves slower than IDLE_SPEED and turns slower than IDLE_YAW_RATE, its rates taken as the mean
position over the next STILL_S minus the mean over the last STILL_S; or, without a base, the end
effector moves slower than IDLE_EE_SPEED, its rate over half of STILL_S on each side (its pose, from
kinematics, does not drift, so shorter windows suffice and blur a pause's edges less). What the task
moves is what counts: commands do not enter, so an operator holding a pose with non-zero torques is
as idle as one who let go. A base's odometry is dead-reckoned and drifts (a random walk reads as
slow motion over a second), so a base is also still when its joints, when declared, barely move:
by the same majority vote, most steps within STILL_S have every joint slower than
STILL_JOINT_SPEED (encoders do not drift; a leg or wheel that does not turn moves no base).
Without a base or an end effector, a step is still when its commands are below IDLE_ACTION and its
joints (when declared) slower than IDLE_JOINT_SPEED, on average over STILL_S. Steps after the
target was reached are never still. Motion slower than the thresholds (a robot easing to a stop)
counts as still.
"""
from __future__ import annotations

import polars as pl

from foundations.profile import RobotProfile
from foundations.progress import instruction_key, measure_values, profile_slice, skill_table, unwrapped
from foundations.schema import ACTION

__all__ = ["TEMPORAL_COMPONENTS", "idle_trims", "still_steps", "temporal_components"]

TEMPORAL_COMPONENTS = ("on_task", "specificity", "efficiency", "hesitation", "consistency")
WINDOW_S = 1.0  # seconds: the windows progress and motion are averaged over
STILL_S = 1.0  # seconds: the windows that say whether a step is still (shorter ones let odometry noise through)
MIN_WINDOWS = 4  # short episodes get shorter windows, so at least this many
ON_TASK_PACE = 1.0  # share of the pace that reaches the target in a nominal episode
FLOOR = 0.05  # target units: added to the denominators of the ratios, so that noise alone scores near 0
# Stillness thresholds, shared with quality.scores' per-step idle (the same robot is still by both).
IDLE_ACTION = 0.05  # half action ranges
IDLE_SPEED = 0.05  # m/s of the base
IDLE_YAW_RATE = 0.05  # rad/s of the base
IDLE_EE_SPEED = 0.01  # m/s of the end effector
IDLE_JOINT_SPEED = 0.2  # rad/s of every joint
STILL_JOINT_SPEED = 0.5  # rad/s: the fastest joint slower than this on most steps within STILL_S (see *still*)

_EP = "episode_id"


def _skills(profile: RobotProfile) -> pl.DataFrame:
    """The profile's skills with an index: _skill, measure, target, key."""
    return skill_table(profile).with_row_index("_skill").with_columns(pl.col("_skill").cast(pl.Int64))


def _motion_columns(profile: RobotProfile, columns: list[str]) -> dict[str, pl.Expr]:
    """Position-like coordinates whose smoothed rate says whether the robot moves (per step, over the episode)."""
    out: dict[str, pl.Expr] = {}
    if profile.base_pose is not None and profile.base_pose.feature in columns:
        out["_bx"] = profile_slice(profile.base_pose, 0)
        out["_by"] = profile_slice(profile.base_pose, 1)
        out["_byaw"] = unwrapped(profile_slice(profile.base_pose, 2)).over(_EP)  # turned since the first step
        out["_yaw_first"] = profile_slice(profile.base_pose, 2).first().over(_EP)  # the first heading
    elif profile.end_effector is not None and profile.end_effector.feature in columns:
        for i in range(profile.end_effector.count or 2):
            out[f"_e{i}"] = profile_slice(profile.end_effector, i)
    return out


def still_steps(df: pl.DataFrame, profile: RobotProfile) -> pl.DataFrame:
    """Per step, sorted by (episode, step): skill index, measures (`_m_<measure>`), normalised
    instructed progress `_pi`, time `_t`, smoothed stillness `_still` and `_reached`. Computed once
    and passed as `steps=` to `idle_trims` and `temporal_components` when both are wanted."""
    cols = df.columns
    skills = _skills(profile)
    measures = measure_values(profile, cols)
    motion = _motion_columns(profile, cols)
    low, high = profile.action_bounds
    half = (high - low) / 2
    dt = df.lazy().select(pl.col("timestamp").diff().over(_EP).median()).collect().item() or 0.05
    h = max(1, round(STILL_S / dt))
    frame = (
        df.lazy()
        .with_columns(pl.col("language_instruction").pipe(instruction_key).alias("_key"))
        .join(skills.lazy().select("key", "_skill", "measure", "target"), left_on="_key", right_on="key", how="left")
        .sort(_EP, "step")
        .with_columns(
            **{f"_m_{m}": e for m, e in measures.items()},
            **motion,
            _t=pl.col("timestamp") - pl.col("timestamp").first().over(_EP),
            _cmd=(pl.col(ACTION).list.eval(pl.element().cast(pl.Float64).pow(2)).list.mean().sqrt() / half),
            _cmd_max=pl.col(ACTION).list.eval(pl.element().abs()).list.max().cast(pl.Float64) / half,
        )
    )
    chain = pl.lit(None, pl.Float64)
    for m in measures:
        chain = pl.when(pl.col("measure") == m).then(pl.col(f"_m_{m}")).otherwise(chain)
    frame = frame.with_columns(_pi=chain / pl.col("target"))

    def rate(col: str, k: int) -> pl.Expr:
        # Mean over the next k steps minus the mean over the last k, per k steps: noise averages out.
        # Near the ends the means hold fewer steps, so the last steps are judged by themselves.
        back = pl.col(col).rolling_mean(k, min_samples=1)
        ahead = pl.col(col).reverse().rolling_mean(k, min_samples=1).reverse().shift(-1)
        return ((ahead - back) / (k * dt)).forward_fill().over(_EP)

    def majority(still: pl.Expr) -> pl.Expr:
        # Still when most steps within STILL_S (centred) are: isolated flips of noise are voted
        # down, and a pause's edges stay where they are (a moving average would blur them inward).
        return still.fill_null(False).cast(pl.Float64).rolling_mean(h, min_samples=1, center=True).over(_EP) > 0.5

    has_joints = profile.joint_velocity is not None and profile.joint_velocity.feature in cols
    # A base's odometry is dead-reckoned and drifts (an end effector's pose, from kinematics, does
    # not); joint encoders do not drift: joints that barely move say the base is still even when
    # its drifting odometry seems to creep.
    joints_still = majority(
        profile_slice(profile.joint_velocity).list.eval(pl.element().abs()).list.max() < STILL_JOINT_SPEED
    ) if has_joints else pl.lit(False)
    still: list[pl.Expr] = []
    if "_bx" in motion:
        # Drift grows as the square root of time, so a base's rate needs the full STILL_S on each side.
        speed = (rate("_bx", h).pow(2) + rate("_by", h).pow(2)).sqrt()
        still += [speed < IDLE_SPEED, rate("_byaw", h).abs() < IDLE_YAW_RATE]
    elif motion:
        # An end effector's pose does not drift: half of STILL_S on each side averages its noise.
        ee_speed = pl.sum_horizontal([rate(c, max(1, h // 2)).pow(2) for c in motion]).sqrt()
        still.append(ee_speed < IDLE_EE_SPEED)
    else:
        still.append(pl.col("_cmd_max").rolling_mean(h, min_samples=1).over(_EP) < IDLE_ACTION)
        if has_joints:
            joint_speed = profile_slice(profile.joint_velocity).list.eval(pl.element().abs()).list.max()
            still.append(joint_speed.rolling_mean(h, min_samples=1).over(_EP) < IDLE_JOINT_SPEED)
    pose_still = majority(pl.all_horizontal(still)) if motion else pl.all_horizontal(still).fill_null(False)
    if "_bx" in motion:
        pose_still = pose_still | joints_still
    reached = (pl.col("_pi") >= 1).fill_null(False).cum_max().over(_EP)
    frame = frame.with_columns(
        _reached=reached,
        _still=pose_still & ~reached,
    )
    return frame.collect()


def idle_trims(df: pl.DataFrame, profile: RobotProfile, *, steps: pl.DataFrame | None = None) -> pl.DataFrame:
    """Leading and trailing still steps of each episode (see the module docstring for *still*).

    One row per episode_id, sorted by it: n_steps, idle_start_steps, idle_start_s (seconds from
    the first step to the first moving one), idle_end_steps, idle_end_s (from the last moving
    step to the last step). An episode that never moves has every step at the start and
    idle_end_steps 0. Steps after the target was reached are never idle, so holding at the
    goal is kept.
    """
    if df.is_empty():
        return pl.DataFrame(schema={_EP: pl.String, "n_steps": pl.Int64, "idle_start_steps": pl.Int64,
                                    "idle_start_s": pl.Float64, "idle_end_steps": pl.Int64, "idle_end_s": pl.Float64})
    steps = still_steps(df, profile) if steps is None else steps
    moving = ~pl.col("_still")
    first = pl.int_range(pl.len()).filter(moving).first()
    last = pl.int_range(pl.len()).filter(moving).last()
    return (
        steps.group_by(_EP)
        .agg(
            n_steps=pl.len().cast(pl.Int64),
            _first=first, _last=last,
            _t_first=pl.col("_t").filter(moving).first(), _t_last=pl.col("_t").filter(moving).last(),
            _t_end=pl.col("_t").last(),
        )
        .select(
            _EP, "n_steps",
            idle_start_steps=pl.col("_first").fill_null(pl.col("n_steps")).cast(pl.Int64),
            idle_start_s=pl.col("_t_first").fill_null(pl.col("_t_end")).cast(pl.Float64),
            idle_end_steps=(pl.col("n_steps") - 1 - pl.col("_last")).fill_null(0).cast(pl.Int64),
            idle_end_s=(pl.col("_t_end") - pl.col("_t_last")).fill_null(0.0).cast(pl.Float64),
        )
        .sort(_EP)
    )


def temporal_components(df: pl.DataFrame, profile: RobotProfile, *, nominal_s: float | None = None,
                        steps: pl.DataFrame | None = None) -> pl.DataFrame:
    """The components of the module docstring, one row per episode_id (sorted by it).

    Columns: episode_id, on_task, specificity, efficiency, hesitation, consistency, and
    the raw measures behind them: forward_progress (A_i, target units), other_progress (A_o),
    effort, idle_inside (share of still steps inside the task). Components are null where the instructed skill is
    unknown or its measure unreadable.
    `nominal_s`: length of a complete episode in seconds (default: the profile's nominal_episode_s,
    else each episode's own length).
    """
    steps = still_steps(df, profile) if steps is None else steps
    measures = [c.removeprefix("_m_") for c in steps.columns if c.startswith("_m_")]
    skills = _skills(profile)
    nominal = nominal_s if nominal_s is not None else profile.nominal_episode_s
    base = "_bx" in steps.columns
    # Windows: WINDOW_S long, shorter for short episodes; a partial last window joins the one before.
    length = (pl.col("_t").max() + pl.col("timestamp").diff().median()).over(_EP)
    width = pl.min_horizontal(pl.lit(WINDOW_S), length / MIN_WINDOWS)
    last_window = ((length / width).floor() - 1).clip(lower_bound=0)
    windowed = steps.lazy().with_columns(_width=width, _w=pl.min_horizontal((pl.col("_t") / width).floor(), last_window))
    means = [pl.col(f"_m_{m}").mean() for m in measures]
    if base:
        means += [pl.col("_bx").mean(), pl.col("_by").mean(), pl.col("_byaw").mean(), pl.col("_yaw_first").first()]
    windows = (
        windowed.group_by(_EP, "_w")
        .agg(*means, pl.col("_pi").mean(), pl.col("_still").mean().alias("_still_share"),
             pl.col("_skill", "measure", "target", "_width").first())
        .sort(_EP, "_w")
    )
    d = {m: pl.col(f"_m_{m}").diff().over(_EP) for m in measures}
    # Progress toward each declared skill in each window change, in target units.
    toward = {int(j): d[m] / t for j, m, t in skills.select("_skill", "measure", "target").iter_rows() if m in d}
    instructed = pl.col("_pi").diff().over(_EP)
    reached = (pl.col("_pi") >= 1).fill_null(False).cum_max().over(_EP)  # by the end of the window change
    reached_before = reached.shift(1).fill_null(False).over(_EP)
    pace = ON_TASK_PACE * pl.col("_width") / (pl.lit(nominal) if nominal else pl.col("_length"))
    same = {int(j): (m, t > 0) for j, m, t in skills.select("_skill", "measure", "target").iter_rows()}
    per_window = windows.with_columns(
        _length=(pl.col("_w").max() + 1).over(_EP) * pl.col("_width"),
    ).with_columns(
        _on=pl.when(reached).then(1.0).otherwise((instructed / pace).clip(0.0, 1.0)),
        _d_i=instructed,
        **{f"_d_{j}": e for j, e in toward.items()},
        _active=pl.col("_still_share") < 0.5,
    )
    # Motion the instructed way over all motion, before the target was reached (target units).
    good, gross = instructed.clip(lower_bound=0.0), instructed.abs()
    if base:
        dx, dy = pl.col("_bx").diff().over(_EP), pl.col("_by").diff().over(_EP)
        yaw0 = pl.col("_yaw_first")
        along = (dx * yaw0.cos() + dy * yaw0.sin()) / pl.col("target").abs()
        path = (dx.pow(2) + dy.pow(2)).sqrt() / pl.col("target").abs()
        good = pl.when(pl.col("measure") == "forward_m").then(along.clip(lower_bound=0.0)).otherwise(good)
        gross = pl.when(pl.col("measure") == "forward_m").then(path).otherwise(gross)
    per_window = per_window.with_columns(_good=pl.when(~reached_before).then(good),
                                         _gross=pl.when(~reached_before).then(gross))
    per_episode = per_window.group_by(_EP).agg(
        pl.col("_skill", "measure", "target").first(),
        on_task=pl.col("_on").drop_nulls().mean(),
        forward_progress=pl.col("_d_i").clip(lower_bound=0.0).sum(),
        _instructed_known=pl.col("_d_i").is_not_null().any(),
        **{f"_a_{j}": pl.col(f"_d_{j}").clip(lower_bound=0.0).sum() for j in toward},
        _moved=pl.col("_active").any(),
        _good=pl.col("_good").sum(), _gross=pl.col("_gross").sum(),
    )
    others = [pl.when(~((pl.col("measure") == same[j][0]) & ((pl.col("target") > 0) == same[j][1])))
              .then(pl.col(f"_a_{j}")) for j in toward]
    step_index = pl.int_range(pl.len())
    moving = ~pl.col("_still")
    inside_task = ((step_index >= step_index.filter(moving).first()) & (step_index <= step_index.filter(moving).last())
                   & ~pl.col("_reached"))
    effort = (
        steps.lazy().group_by(_EP)
        .agg(_cmd=pl.col("_cmd").mean(), _dur=pl.col("_t").max() + pl.col("timestamp").diff().median(),
             idle_inside=pl.col("_still").filter(inside_task).mean())
        .with_columns(effort=pl.col("_cmd") * pl.col("_dur") / (nominal if nominal else pl.col("_dur")))
    )
    known = pl.col("_instructed_known")
    a_i = pl.col("forward_progress")
    out = (
        per_episode.join(effort, on=_EP, how="left")
        .with_columns(other_progress=pl.max_horizontal(others).fill_null(0.0) if others else pl.lit(0.0))
        .with_columns(
            on_task=pl.when(known).then(pl.col("on_task")),
            specificity=pl.when(known).then(a_i / (a_i + pl.col("other_progress") + FLOOR)),
            efficiency=pl.when(known).then(a_i / (a_i + pl.col("effort") + FLOOR)),
            hesitation=pl.when(known).then(pl.when(pl.col("_moved")).then(1.0 - pl.col("idle_inside").fill_null(0.0))
                                           .otherwise(0.0)),
            consistency=pl.when(known).then(pl.col("_good") / (pl.col("_gross") + FLOOR)),
        )
        .select(_EP, *[pl.col(c).cast(pl.Float64).clip(0.0, 1.0) for c in TEMPORAL_COMPONENTS],
                pl.when(known).then(a_i).alias("forward_progress"), "other_progress", "effort",
                "idle_inside")
        .sort(_EP)
        .collect()
    )
    return out
