"""Progress measures (foundations.progress) on hand-built trajectories with known answers."""
from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from foundations.profile import RobotProfile, Slice, load_profile
from foundations.progress import episode_progress, profile_slice, step_progress
from foundations.schema import POSE, STATE
from synthetic_episodes import EE, TARGET, arm_episode, arm_profile, fingertip

ANT = load_profile("ant")


def frame(instruction: str, episode_id: str = "e", **lists: np.ndarray) -> pl.DataFrame:
    """An episode whose list features are the given (n, d) arrays (the rest of the table is not read)."""
    n = len(next(iter(lists.values())))
    return pl.DataFrame(
        {"episode_id": [episode_id] * n, "step": np.arange(n, dtype=np.int32),
         "language_instruction": [instruction] * n,
         **{name.replace("_", "."): np.asarray(v, dtype=np.float32).tolist() for name, v in lists.items()}},
    )


def pose(x, y, yaw) -> dict[str, np.ndarray]:
    return {"observation_pose": np.stack([x, y, (np.asarray(yaw) + math.pi) % (2 * math.pi) - math.pi], axis=1)}


def raw(df: pl.DataFrame, profile: RobotProfile) -> np.ndarray:
    return step_progress(df, profile)["progress_raw"].to_numpy()


def test_forward_m_is_along_the_first_heading():
    heading = math.radians(120)
    d = np.array([0.0, 0.5, 1.0, 0.7])  # metres along the heading; the last step backs up 0.3
    side = np.array([0.0, 0.2, -0.1, 0.0])  # sideways drift does not count
    x = d * math.cos(heading) - side * math.sin(heading)
    y = d * math.sin(heading) + side * math.cos(heading)
    df = frame("Walk  Forward ", **pose(x, y, heading + np.array([0.0, 0.3, -0.4, 1.0])))  # matches "walk forward"
    np.testing.assert_allclose(raw(df, ANT), d, atol=1e-6)
    ep = episode_progress(df, ANT).row(0, named=True)
    assert ep["measure"] == "forward_m" and ep["progress"] == pytest.approx(0.35, abs=1e-6) and ep["progress_note"] is None
    backwards = frame("walk forward", **pose(-d * math.cos(heading), -d * math.sin(heading), np.full(4, heading)))
    assert raw(backwards, ANT)[-1] == pytest.approx(-0.7, abs=1e-6)
    assert episode_progress(backwards, ANT)["progress"][0] == 0.0


@pytest.mark.parametrize("instruction,start,rate", [("turn left", 170, 10), ("turn right", -170, -10)])
def test_yaw_rad_unwraps_across_pi(instruction, start, rate):
    yaw = np.radians(start + rate * np.arange(5))  # 170 -> 210 deg: the logged yaw jumps from +180 to -180
    df = frame(instruction, **pose(np.zeros(5), np.zeros(5), yaw))
    logged = df[POSE].list.get(2).to_numpy()
    assert np.abs(np.diff(logged)).max() > math.pi  # the log does wrap
    np.testing.assert_allclose(raw(df, ANT), np.radians(rate * np.arange(5)), atol=1e-5)
    assert episode_progress(df, ANT)["progress"][0] == pytest.approx(math.radians(40) / 3.0, abs=1e-5)


def test_a_missing_yaw_makes_the_turn_unmeasurable_from_there_on():
    df = frame("turn left", **pose(np.zeros(4), np.zeros(4), [0.0, 0.1, 0.2, 0.3]))
    df = df.with_columns(pl.when(pl.col("step") == 2).then(pl.lit([0.0, 0.0], pl.List(pl.Float32)))
                         .otherwise(pl.col(POSE)).alias(POSE))  # [x, y] without the yaw
    steps = step_progress(df, ANT)
    assert steps["progress_raw"].to_list()[:2] == pytest.approx([0.0, 0.1])
    assert steps["progress_raw"][2:].null_count() == 2
    assert "observation.pose" in steps["progress_note"][3] and "earlier" in steps["progress_note"][3]


REACH3 = RobotProfile.model_validate({
    "name": "arm3", "action_bounds": [-1, 1], "end_effector": {"feature": EE, "count": 3},
    "target": {"feature": TARGET, "count": 3}, "skills": {"reach": {"measure": "reach_fraction", "target": 1.0}},
})


@pytest.mark.parametrize("profile,dims", [(arm_profile(), 2), (REACH3, 3)])
def test_reach_fraction_is_the_share_of_the_first_distance_closed(profile, dims):
    target = np.zeros((5, dims))
    target[:, 0] = 0.3
    direction = np.ones(dims) / math.sqrt(dims)
    d = np.array([0.2, 0.15, 0.1, 0.1, 0.05])
    ee = target + d[:, None] * direction
    instruction = "reach the target" if dims == 2 else "reach"
    df = frame(instruction, observation_ee=ee, observation_target=target)
    np.testing.assert_allclose(raw(df, profile), [0.0, 0.25, 0.5, 0.5, 0.75], atol=1e-5)
    # Moving away makes it negative (and progress 0); moving past the target does not count as more than 1.
    away = frame(instruction, observation_ee=target + np.array([0.1, 0.2, 0.3, 0.4, 0.4])[:, None] * direction,
                 observation_target=target)
    np.testing.assert_allclose(raw(away, profile), [0.0, -1.0, -2.0, -3.0, -3.0], atol=1e-5)
    assert episode_progress(away, profile)["progress"][0] == 0.0


def test_reach_fraction_from_on_the_target_is_null_with_a_reason():
    df = frame("reach the target", observation_ee=np.zeros((3, 2)), observation_target=np.zeros((3, 2)))
    ep = episode_progress(df, arm_profile()).row(0, named=True)
    assert ep["progress_raw"] is None and "starts on the target" in ep["progress_note"]


@pytest.mark.parametrize("instruction,start,rate", [("sweep left", 160, 15), ("sweep right", -160, -15)])
def test_bearing_rad_unwraps_across_pi(instruction, start, rate):
    bearing = np.radians(start + rate * np.arange(5))
    ee = 0.15 * np.stack([np.cos(bearing), np.sin(bearing)], axis=1)
    df = frame(instruction, observation_ee=ee, observation_target=np.zeros((5, 2)))
    np.testing.assert_allclose(raw(df, arm_profile()), np.radians(rate * np.arange(5)), atol=1e-5)


def test_the_arm_builder_sweeps_through_pi():
    df = arm_episode("sweep_left", "s", n=40, q1_0=2.5)
    logged = np.arctan2(*df[EE].list.get(1).to_numpy()[None], df[EE].list.get(0).to_numpy())
    assert np.abs(np.diff(logged)).max() > math.pi
    assert raw(df, arm_profile())[-1] == pytest.approx(0.5 * 39 / 20, rel=1e-4)
    assert np.allclose(df[EE].to_list(), fingertip(np.array(df[STATE].to_list())[:, :2]), atol=1e-6)


def test_unknown_instructions_and_missing_columns_are_explained():
    df = frame("dance", **pose(np.zeros(3), np.zeros(3), np.zeros(3)))
    ep = episode_progress(df, ANT).row(0, named=True)
    assert ep["progress"] is None and "unknown instruction 'dance'" in ep["progress_note"]
    assert "walk forward" in ep["progress_note"]
    no_ee = frame("reach the target", observation_target=np.zeros((3, 2)))
    assert "no observation.ee column" in episode_progress(no_ee, arm_profile())["progress_note"][0]


def test_profile_slice_reads_declared_dimensions_and_refuses_others():
    df = pl.DataFrame({STATE: [[0.0, 1.0, 2.0, 3.0], [0.0, 1.0]]}, schema={STATE: pl.List(pl.Float32)})
    s = Slice(feature=STATE, start=1, count=3)
    out = df.select(profile_slice(s).alias("all"), profile_slice(s, 2).alias("d2"),
                    profile_slice(Slice(feature=STATE, start=1), None).alias("rest"))
    assert out["all"].to_list() == [[1.0, 2.0, 3.0], None]  # too short: null, never a shorter list
    assert out["d2"].to_list() == [3.0, None] and out["rest"].to_list() == [[1.0, 2.0, 3.0], [1.0]]
    with pytest.raises(ValueError, match="outside the slice"):
        profile_slice(s, 3)
