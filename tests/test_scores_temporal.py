"""Time-aware score components, idle trims and explanations on hand-built legged and arm episodes."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from foundations.profile import load_profile
from quality.score_model import load_score_model
from quality.scores import COMPONENTS, DEFAULT_WEIGHTS, HINTS, lowest_scores, score_episodes
from quality.temporal import TEMPORAL_COMPONENTS, idle_trims, still_steps, temporal_components
from synthetic_episodes import DT, PAUSE, arm_episode, arm_profile, episode, table

ANT = load_profile("ant")
ARM = arm_profile()
NOISE = 0.02  # m and rad of odometry noise, with drift: ten times what a still robot moves per step
ARM_N = 100  # 5 s, the arm fleet's nominal length


def legged_table() -> pl.DataFrame:
    return table(
        episode("walker", "walker"),
        episode("turn_left", "wrong_skill", instruction="walk forward"),  # smooth, but another skill
        episode("weak", "weak"),
        episode("paused", "paused"),
        episode("hesitant", "late_start"),
        episode("idle", "idle"),
        episode("walker", "noisy_walker", odometry_noise=NOISE),
        episode("idle", "noisy_idle", odometry_noise=NOISE),
        episode("paused", "noisy_paused", odometry_noise=NOISE),
    )


@pytest.fixture(scope="module")
def legged() -> pl.DataFrame:
    return score_episodes(legged_table(), ANT, nominal_steps=200)


@pytest.fixture(scope="module")
def arm() -> pl.DataFrame:
    eps = table(
        arm_episode("reacher", "reacher", n=ARM_N),
        arm_episode("sweep_left", "wrong_skill", n=ARM_N, instruction="reach the target"),
        arm_episode("weak_reacher", "weak", n=ARM_N),
        arm_episode("sweep_left", "sweep", n=ARM_N),
        arm_episode("paused_sweep", "paused", n=ARM_N),
        arm_episode("arm_idle", "idle", n=ARM_N),
        arm_episode("reacher", "noisy_reacher", n=ARM_N, ee_noise=0.002),
        arm_episode("arm_idle", "noisy_idle", n=ARM_N, ee_noise=0.002),
    )
    return score_episodes(eps, ARM)


def _row(scores: pl.DataFrame, episode_id: str) -> dict:
    return scores.filter(pl.col("episode_id") == episode_id).row(0, named=True)


@pytest.mark.parametrize("which", ["legged", "arm"])
def test_every_component_is_named_and_in_the_unit_interval(which, request):
    scores = request.getfixturevalue(which)
    for name in TEMPORAL_COMPONENTS:
        assert name in COMPONENTS and DEFAULT_WEIGHTS[name] > 0
        values = scores.get_column(name).drop_nulls()
        assert values.len() == scores.height and ((values >= 0) & (values <= 1)).all(), name
    # The time-aware components together carry more weight than progress and completeness, and
    # far more than smoothness, which rates a smooth operator at the wrong task as good.
    temporal = sum(DEFAULT_WEIGHTS[c] for c in TEMPORAL_COMPONENTS)
    assert temporal > DEFAULT_WEIGHTS["progress"] + DEFAULT_WEIGHTS["completeness"]
    assert temporal > 5 * DEFAULT_WEIGHTS["smoothness"]


def test_legged_smooth_wrong_skill_is_caught_by_specificity_and_on_task(legged):
    walker, wrong = _row(legged, "walker"), _row(legged, "wrong_skill")
    assert wrong["smoothness"] > 0.95  # as smooth as the walker: the old score's blind spot
    assert walker["specificity"] > 0.9 and wrong["specificity"] < 0.1
    assert walker["on_task"] == 1.0 and wrong["on_task"] < 0.1
    assert wrong["other_progress"] > 0.5  # it did turn left well
    assert walker["quality_score"] > wrong["quality_score"] + 0.4


def test_legged_weak_operator_is_slow_on_task_and_scores_below_the_walker(legged):
    walker, weak = _row(legged, "walker"), _row(legged, "weak")
    assert 0.25 < weak["on_task"] < 0.45 and weak["progress"] < 0.5  # 0.07 m/s against the 0.2 m/s that walks 2 m in 10 s
    assert weak["efficiency"] < walker["efficiency"]
    assert walker["quality_score"] > weak["quality_score"] + 0.15


def test_legged_pause_inside_the_task_lowers_hesitation_but_a_late_start_does_not(legged):
    walker, paused, late = _row(legged, "walker"), _row(legged, "paused"), _row(legged, "late_start")
    assert walker["hesitation"] == 1.0 and paused["hesitation"] < 0.9
    assert late["hesitation"] == 1.0  # waiting before the task is an idle end, trimmed instead
    assert late["idle_start_steps"] > 0.8 * 100 and paused["idle_start_steps"] == paused["idle_end_steps"] == 0
    assert _row(legged, "idle")["hesitation"] == 0.0  # never moved


def test_legged_components_hold_up_under_noisy_drifting_odometry(legged):
    clean, noisy = _row(legged, "walker"), _row(legged, "noisy_walker")
    for name in TEMPORAL_COMPONENTS:
        assert noisy[name] == pytest.approx(clean[name], abs=0.05), name
    idle = _row(legged, "noisy_idle")
    assert idle["on_task"] < 0.1 and idle["specificity"] < 0.3 and idle["hesitation"] == 0.0
    assert idle["efficiency"] < 0.5 and idle["consistency"] < 0.3
    assert idle["idle_start_steps"] == 200  # noise does not read as motion
    assert _row(legged, "noisy_paused")["hesitation"] < 0.9


def test_legged_pause_is_seen_through_drifting_odometry_by_the_joints():
    # Drift of a centimetre a step reads as slow motion over a second; the joints that stopped do not.
    eps = table(episode("paused", "paused"), episode("paused", "drifting", odometry_noise=0.1),
                episode("walker", "drifting_walker", odometry_noise=0.1))
    drifting = temporal_components(eps, ANT)
    paused, drift, walker = (_row(drifting, e) for e in ("paused", "drifting", "drifting_walker"))
    assert drift["idle_inside"] == pytest.approx(paused["idle_inside"], abs=0.05) and paused["idle_inside"] > 0.3
    assert walker["idle_inside"] == 0.0 and walker["hesitation"] == 1.0
    # Without declared joint velocities only the pose speaks, and the drift hides most of the pause.
    no_joints = ANT.model_copy(update={"joint_velocity": None})
    assert _row(temporal_components(eps, no_joints), "drifting")["idle_inside"] < paused["idle_inside"] - 0.15


def _still_indices(df: pl.DataFrame, profile, episode_id: str) -> list[int]:
    steps = still_steps(df, profile).filter(pl.col("episode_id") == episode_id)
    return steps.with_row_index("i").filter(pl.col("_still"))["i"].to_list()


@pytest.mark.parametrize("noise", [0.0, NOISE])
def test_a_legged_pause_is_still_from_edge_to_edge(noise):
    # A majority vote over STILL_S keeps the pause's edges where they are; a moving average of the
    # joint speeds blurred each edge inward by up to half a second (a third of a 3 s pause lost).
    n = 200
    start, end = int(PAUSE[0] * n), int(PAUSE[1] * n)
    still = _still_indices(table(episode("paused", "p", n=n, odometry_noise=noise)), ANT, "p")
    assert abs(still[0] - start) <= 2 and abs(still[-1] - (end - 1)) <= 2
    assert len(still) == still[-1] - still[0] + 1  # one stretch: noise flips no step inside it


@pytest.mark.parametrize("noise", [0.0, 0.002])
def test_an_arm_pause_is_still_inside_its_edges(noise):
    # The end effector's rate is measured over half of STILL_S on each side (its pose does not
    # drift), then voted on: still only inside the pause, and over most of it.
    start, end = int(PAUSE[0] * ARM_N), int(PAUSE[1] * ARM_N)
    still = _still_indices(table(arm_episode("paused_sweep", "p", n=ARM_N, ee_noise=noise)), ARM, "p")
    assert still and start <= still[0] and still[-1] < end
    assert len(still) >= 0.45 * (end - start)


def test_consistency_follows_the_first_heading(legged):
    # Straight along the first heading; a turner told to walk forward goes nowhere along it.
    assert _row(legged, "walker")["consistency"] > 0.7 > 0.1 > _row(legged, "wrong_skill")["consistency"]


def test_arm_wrong_skill_weak_and_paused(arm):
    reacher, wrong, weak = _row(arm, "reacher"), _row(arm, "wrong_skill"), _row(arm, "weak")
    assert reacher["on_task"] == 1.0 and reacher["progress"] == 1.0
    assert wrong["specificity"] < reacher["specificity"] and wrong["other_progress"] > 0.5
    assert reacher["quality_score"] > wrong["quality_score"] + 0.2
    assert weak["progress"] < 0.3 and weak["on_task"] < 0.7
    assert reacher["quality_score"] > weak["quality_score"] + 0.2
    assert _row(arm, "paused")["hesitation"] < _row(arm, "sweep")["hesitation"] == 1.0
    assert arm.get_column("consistency").null_count() == 0  # measured on the instructed measure without a base


def test_arm_components_hold_up_under_end_effector_noise(arm):
    clean, noisy = _row(arm, "reacher"), _row(arm, "noisy_reacher")
    for name in TEMPORAL_COMPONENTS:
        assert noisy[name] == pytest.approx(clean[name], abs=0.05), name
    idle = _row(arm, "noisy_idle")
    assert idle["on_task"] < 0.1 and idle["specificity"] < 0.3 and idle["idle_start_steps"] == ARM_N


def test_idle_trims_record_steps_and_seconds_at_each_end():
    ant = idle_trims(table(episode("hesitant", "late_start", n=100), episode("walker", "walker", n=100)), ANT)
    late = ant.filter(pl.col("episode_id") == "late_start").row(0, named=True)
    # Still for the first 50 steps; the one-second averages keep up to half a second next to the motion.
    assert 35 <= late["idle_start_steps"] <= 50 and late["idle_end_steps"] == 0
    assert late["idle_start_s"] == pytest.approx(late["idle_start_steps"] * DT)
    assert ant.filter(pl.col("episode_id") == "walker").select("idle_start_steps", "idle_end_steps").row(0) == (0, 0)
    away = idle_trims(arm_episode("away", "away", n=ARM_N), ARM).row(0, named=True)
    # It moves off the target for 60 % of the episode and then stands still: a trailing idle end
    # (40 steps), plus the last of its easing out, slower than 1 cm/s.
    assert 30 <= away["idle_end_steps"] <= 50 and away["idle_end_s"] == pytest.approx(away["idle_end_steps"] * DT)
    # Holding at the goal after reaching it is the task done, never trimmed.
    reached = idle_trims(arm_episode("reacher", "r", n=ARM_N), ARM).row(0, named=True)
    assert reached["idle_end_steps"] == 0


def _raised(row: dict, score) -> dict[str, float]:
    """The score with each measured component raised to 1, the others as they are."""
    x = np.array([[np.nan if row[c] is None else row[c] for c in COMPONENTS]])
    out = {}
    for i, c in enumerate(COMPONENTS):
        if row[c] is not None:
            raised = x.copy()
            raised[0, i] = 1.0
            out[c] = float(score(raised)[0])
    return out


def test_explanations_name_the_component_that_cost_most(legged):
    model = load_score_model()
    for row in legged.iter_rows(named=True):
        odds = _raised(row, model.log_odds)
        assert odds[row["lowest_component"]] == pytest.approx(max(odds.values()))
        if "no single component" not in row["explanation"]:
            assert row["explanation"].startswith(row["lowest_component"] + " ")
            assert HINTS[row["lowest_component"]] in row["explanation"]
            then = _raised(row, model.probability)[row["lowest_component"]]
            assert f"at 1 the score would be {round(then, 2)})" in row["explanation"]
    # What a curator would say: standing, pausing, another skill, too slow.
    assert _row(legged, "paused")["lowest_component"] == "hesitation"
    assert _row(legged, "idle")["lowest_component"] in ("on_task", "hesitation")
    assert _row(legged, "wrong_skill")["lowest_component"] in ("on_task", "specificity", "progress")
    assert _row(legged, "weak")["lowest_component"] in ("on_task", "progress")
    assert _row(legged, "walker")["explanation"] == "no single component would raise the score"
    # With weights, the largest weight x (1 - value) is named, with the weighted mean it would then have.
    weighted = score_episodes(legged_table(), ANT, weights={}, nominal_steps=200)
    for row in weighted.iter_rows(named=True):
        cost = {c: DEFAULT_WEIGHTS[c] * (1 - row[c]) for c in COMPONENTS if row[c] is not None}
        assert cost[row["lowest_component"]] == pytest.approx(max(cost.values()))
    wrong = _row(weighted, "wrong_skill")
    measured = sum(DEFAULT_WEIGHTS[c] for c in COMPONENTS if wrong[c] is not None)
    then = wrong["quality_score"] + DEFAULT_WEIGHTS["progress"] / measured
    assert wrong["lowest_component"] == "progress"
    assert f"progress 0.0 (at 1 the score would be {round(then, 2)})" in wrong["explanation"]
    lowest = lowest_scores(legged, 3)
    assert lowest.columns == ["episode_id", "language_instruction", "quality_score", "lowest_component", "explanation"]
    assert lowest["quality_score"].is_sorted() and lowest.height == 3
    assert lowest["quality_score"][0] == pytest.approx(legged["quality_score"].min(), abs=1e-3)


def test_unknown_instruction_leaves_the_time_aware_components_null():
    eps = table(episode("walker", "dancer", n=60, instruction="dance"))
    comps = temporal_components(eps, ANT)
    assert all(comps[c][0] is None for c in TEMPORAL_COMPONENTS)
    scored = score_episodes(eps, ANT)
    assert scored["quality_score"][0] is not None and scored["lowest_component"][0] in COMPONENTS
