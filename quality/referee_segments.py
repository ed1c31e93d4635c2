"""Cut episodes into fixed windows of control steps and describe each window in words.

A segment is K consecutive control steps of one episode (default 20 = 1 s at 20 Hz); the
last one may be shorter. Its "before" state is the last step of the previous segment (the
first step of the episode for segment 0), so consecutive segments share their boundary and
the changes of all segments add up to the episode's total change.

The columns of a segment come from the robot profile (`foundations.profile`): base pose
(position, heading, speed, forward/left motion in its own frame, turn), posture (height,
upright or fallen, fell or got up), end effector (position, speed, distance to a target).
What the referee reads (`text`) is short: the task, and what changed in its terms, the
skill's progress measure over the segment (`foundations.progress`), e.g. 'In 2.00 s it moved
0.42 m forward along the starting heading: 21 % of the goal, 40 % done so far.', plus
whether it fell.

Everything is computed with polars expressions over all rows at once; the rendering is a
`concat_str`, so no Python code runs per row or per segment.
"""
from __future__ import annotations

import math

import polars as pl

from foundations.geometry import upright_cosine
from foundations.profile import RobotProfile
from foundations.progress import distance_to_target, measure_of_skill, profile_slice, unwrapped, vector_norm, with_skill
from quality.text import fixed

SPEED_WINDOW = 5  # steps averaged for the displayed speeds: a quarter second at 20 Hz smooths gait jitter
BASE_COLUMNS = ("episode_id", "step", "timestamp", "is_terminal", "language_instruction")

_EP = "episode_id"


def _check_profile(profile: RobotProfile) -> None:
    if not isinstance(profile, RobotProfile):
        raise TypeError(f"profile must be a foundations.profile.RobotProfile (load_profile(name)), "
                        f"got {type(profile).__name__}")


def _read_features(profile: RobotProfile) -> list[str]:
    """The canonical features the rendering reads (joint velocities are not among them)."""
    slices = [profile.base_pose, profile.end_effector, profile.target]
    if profile.posture is not None:
        slices += [profile.posture.height, profile.posture.orientation_wxyz]
    return sorted({s.feature for s in slices if s is not None})


def check_columns(df: pl.DataFrame, profile: RobotProfile) -> None:
    """Refuse a table the referee cannot read, saying which columns to add."""
    _check_profile(profile)
    missing = [c for c in (*BASE_COLUMNS, *_read_features(profile)) if c not in df.columns]
    if missing:
        where = profile.path or f"robot profile {profile.name!r}"
        raise ValueError(
            f"the referee needs the columns {missing} of the canonical episode table (foundations/schema.py); "
            f"{where} declares the features it reads, and the source mapping must produce them"
        )


def _state_columns(rows: pl.DataFrame) -> list[str]:
    """The per-step quantities a segment has a before and an after of, in display order."""
    names = ("t", "x", "y", "uyaw", "speed", "z", "up", "ee", "ee_speed", "dist", "progress")
    return [c for c in names if c in rows.columns]


def step_features(df: pl.DataFrame, profile: RobotProfile, segment_steps: int = 20) -> pl.DataFrame:
    """One row per control step with its segment number and the quantities segments describe.

    Columns: episode_id, step, segment, t, terminal, instruction, measure, target, progress
    (the skill's cumulative measure, null when unknown); with a base pose x, y, uyaw (yaw
    unwrapped along the episode, rad), speed (planar m/s); with a posture z (base height),
    up (cosine of the tilt); with an end effector ee (its position list), ee_speed; with a
    target dist (m); and finite (every displayed quantity is a finite number).
    """
    check_columns(df, profile)
    if segment_steps < 1:
        raise ValueError(f"segment_steps must be >= 1, got {segment_steps}")
    smooth = lambda e: e.rolling_mean(window_size=SPEED_WINDOW, min_samples=1).over(_EP).fill_null(0.0)  # noqa: E731
    dt = pl.col("t").diff().over(_EP)
    quantities: dict[str, pl.Expr] = {}  # per-step values, computed on rows sorted by (episode, step)
    numbers = [pl.col("t")]  # what must be finite for the segment to be described
    lists: list[pl.Expr] = []
    if (bp := profile.base_pose) is not None:
        x, y, yaw = (profile_slice(bp, i) for i in range(3))
        speed = pl.when(dt > 0).then((x.diff().pow(2) + y.diff().pow(2)).sqrt().over(_EP) / dt)
        quantities |= {"x": x, "y": y, "uyaw": (yaw.first() + unwrapped(yaw)).over(_EP), "speed": smooth(speed)}
        numbers += [x, y, yaw]
    if (posture := profile.posture) is not None:
        q = [profile_slice(posture.orientation_wxyz, i) for i in range(4)]
        quantities |= {"z": profile_slice(posture.height, 0), "up": upright_cosine(q[1], q[2])}
        numbers += [pl.col("z"), *q]
    if (ee_slice := profile.end_effector) is not None:
        ee = profile_slice(ee_slice)
        ee_speed = pl.when(dt > 0).then(vector_norm((ee - ee.shift(1)).over(_EP)) / dt)
        quantities |= {"ee": ee, "ee_speed": smooth(ee_speed)}
        lists.append(pl.col("ee"))
        if profile.target is not None:
            quantities["dist"] = distance_to_target(profile)
            lists.append(profile_slice(profile.target))
    finite = pl.all_horizontal(
        [e.is_finite().fill_null(False) for e in numbers]
        + [e.list.eval(pl.element().is_finite()).list.all().fill_null(False) for e in lists]
    )
    rows = (
        with_skill(df.lazy().select(*BASE_COLUMNS, *_read_features(profile)), profile)
        .sort(_EP, "step")
        .with_columns(pl.col("timestamp").cast(pl.Float64).alias("t"))
        .with_columns(
            pl.col("is_terminal").fill_null(False).alias("terminal"),
            pl.col("language_instruction").fill_null("").alias("instruction"),
            (pl.int_range(pl.len()).over(_EP) // segment_steps).cast(pl.Int32).alias("segment"),
            measure_of_skill(profile).alias("progress"),
            *(expr.alias(name) for name, expr in quantities.items()),
        )
    )
    keep = [_EP, "step", "segment", "t", "terminal", "instruction", "measure", "target", "progress", *quantities]
    return rows.with_columns(finite.alias("finite")).select(*keep, "finite").collect()


def _down(profile: RobotProfile, up: pl.Expr, z: pl.Expr) -> pl.Expr:
    p = profile.posture
    return (up < p.min_upright_cos) | (z < p.min_height)


def segment_features(rows: pl.DataFrame, profile: RobotProfile) -> pl.DataFrame:
    """One row per segment (from `step_features`): the state before and after, and what changed.

    Columns: episode_id, segment, start_step, end_step, n_steps, instruction, measure,
    target, duration_s, every step quantity _before and _after, task_change (the skill's
    measure over the segment, null when unknown), invalid_reason (null when every number is
    finite); with a base pose forward_m and left_m (displacement in the frame of the heading
    before) and turn_rad (positive = left); with a posture down_before, down_after, fell;
    with an end effector ee_moved_m, and with a target closer_m.
    """
    cols = _state_columns(rows)
    seg = (
        rows.group_by(_EP, "segment", maintain_order=True)
        .agg(
            pl.col("step").first().alias("start_step"),
            pl.col("step").last().alias("end_step"),
            pl.len().cast(pl.Int32).alias("n_steps"),
            pl.col("instruction", "measure", "target").first(),
            pl.col("terminal").any().alias("terminal"),
            pl.col("finite").all().alias("finite"),
            pl.col("step").filter(~pl.col("finite")).first().alias("first_bad_step"),
            *(pl.col(c).last().alias(f"{c}_after") for c in cols),
            *(pl.col(c).first().alias(f"{c}_first") for c in cols),
        )
        .sort(_EP, "segment")
    )
    # The state before a segment is the last state of the previous one; segment 0 starts at its first step.
    first_segment = pl.col("segment") == pl.col("segment").min().over(_EP)
    seg = seg.with_columns(
        pl.when(first_segment).then(pl.col(f"{c}_first")).otherwise(pl.col(f"{c}_after").shift(1).over(_EP))
        .alias(f"{c}_before")
        for c in cols
    )
    change = lambda c: pl.col(f"{c}_after") - pl.col(f"{c}_before")  # noqa: E731
    derived = [(change("t")).alias("duration_s"), change("progress").alias("task_change")]
    if profile.base_pose is not None:
        cos_b, sin_b = pl.col("uyaw_before").cos(), pl.col("uyaw_before").sin()
        derived += [(change("x") * cos_b + change("y") * sin_b).alias("forward_m"),
                    (-change("x") * sin_b + change("y") * cos_b).alias("left_m"),
                    change("uyaw").alias("turn_rad")]
    if profile.end_effector is not None:
        derived.append(vector_norm(change("ee")).alias("ee_moved_m"))
        if profile.target is not None:
            derived.append((-change("dist")).alias("closer_m"))
    if profile.posture is not None:
        seg = seg.with_columns(
            (_down(profile, pl.col("up_after"), pl.col("z_after")) | pl.col("terminal")).alias("down_after"))
        seg = seg.with_columns(
            pl.when(first_segment).then(_down(profile, pl.col("up_before"), pl.col("z_before")))
            .otherwise(pl.col("down_after").shift(1).over(_EP)).alias("down_before"))
        derived.append((pl.col("down_after") & ~pl.col("down_before")).alias("fell"))
    else:
        derived.append(pl.lit(False).alias("fell"))  # without a posture nothing can fall
    seg = seg.with_columns(derived).with_columns(
        pl.when(~pl.col("finite"))
        .then(pl.format(f"missing or non-finite values among {_displayed(profile)} from step {{}}",
                        pl.col("first_bad_step")))
        .alias("invalid_reason")
    )
    return seg.drop([c for c in seg.columns if c.endswith("_first")] + ["finite", "first_bad_step", "terminal"])


def _displayed(profile: RobotProfile) -> str:
    """The quantities a segment shows, named with the features they come from (for invalid_reason)."""
    parts = ["timestamp"]
    if profile.base_pose is not None:
        parts.append(f"base pose x, y, yaw ({profile.base_pose.feature})")
    if profile.posture is not None:
        features = sorted({profile.posture.height.feature, profile.posture.orientation_wxyz.feature})
        parts.append(f"base height and orientation ({', '.join(features)})")
    if profile.end_effector is not None:
        parts.append(f"end effector ({profile.end_effector.feature})")
    if profile.target is not None and profile.end_effector is not None:
        parts.append(f"target ({profile.target.feature})")
    return ", ".join(parts)


def _degrees(expr: pl.Expr) -> pl.Expr:
    return expr * (180.0 / math.pi)


def _signed(value: pl.Expr, digits: int, positive: str, negative: str) -> list[pl.Expr]:
    """"0.42 m forward" style: magnitude then the direction word of its sign."""
    # Rounds to zero -> the positive word, so that "0.00 m right" never shows a sign of noise.
    word = pl.when(value < -0.5 * 10**-digits).then(pl.lit(negative)).otherwise(pl.lit(positive))
    return [fixed(value.abs(), digits), word]


# The skill's measure over a segment, in words (`value` is the change of the measure).
_MEASURE_WORDS = {
    "forward_m": lambda v: [pl.lit("moved "), *_signed(v, 2, " m forward", " m backward"),
                            pl.lit(" along the starting heading")],
    "yaw_rad": lambda v: [pl.lit("turned "), *_signed(_degrees(v), 0, " deg left", " deg right")],
    "reach_fraction": lambda v: [
        pl.when(v < -0.005).then(pl.lit("moved away from the target by ")).otherwise(pl.lit("closed ")),
        fixed((v * 100).abs(), 0),
        pl.when(v < -0.005).then(pl.lit(" % of the starting distance"))
        .otherwise(pl.lit(" % of the starting distance to the target")),
    ],
    "bearing_rad": lambda v: [pl.lit("swept the end effector "),
                              *_signed(_degrees(v), 0, " deg left", " deg right"), pl.lit(" around the base")],
}


def _task_words(profile: RobotProfile) -> pl.Expr:
    """What the segment did in the terms of the instruction: the skill's measure over it, in words."""
    value = pl.col("task_change")
    words = pl.lit("did something no skill of this robot measures")
    for measure in sorted({s.measure for s in profile.skills.values()}):
        words = pl.when(pl.col("measure") == measure).then(pl.concat_str(_MEASURE_WORDS[measure](value))).otherwise(words)
    share = pl.concat_str([pl.lit(": "), fixed(value / pl.col("target") * 100, 0), pl.lit(" % of the goal, "),
                           fixed(pl.col("progress_after") / pl.col("target") * 100, 0), pl.lit(" % done so far")])
    return pl.concat_str([words, pl.when(value.is_not_null()).then(share).otherwise(pl.lit(""))])


def _posture_words() -> pl.Expr:
    return (
        pl.when(pl.col("fell")).then(pl.lit(" It fell over."))
        .when(pl.col("down_before") & pl.col("down_after")).then(pl.lit(" It stayed fallen."))
        .when(pl.col("down_before")).then(pl.lit(" It got back up."))
        .otherwise(pl.lit(" It stayed upright."))
    )  # fmt: skip


def render_segments(seg: pl.DataFrame, profile: RobotProfile) -> pl.DataFrame:
    """Add `text`: what the referee reads, the task and what changed in its terms (and falls).

    Short on purpose: a small model judges a one-line statement of progress toward the
    instruction better than before/after poses it would have to compare itself, and every
    token less is throughput (the poses stay in the segment's columns).
    """
    parts = [pl.lit('Task: "'), pl.col("instruction"), pl.lit('". In '), fixed(pl.col("duration_s")),
             pl.lit(" s it "), _task_words(profile), pl.lit(".")]  # fmt: skip
    if profile.posture is not None:
        parts.append(_posture_words())
    return seg.with_columns(pl.when(pl.col("invalid_reason").is_null()).then(pl.concat_str(parts)).alias("text"))


def segment_table(df: pl.DataFrame, profile: RobotProfile, segment_steps: int = 20) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, segments): per-step segment numbers and the rendered per-segment features."""
    rows = step_features(df, profile, segment_steps)
    return rows, render_segments(segment_features(rows, profile), profile)
