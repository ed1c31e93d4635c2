"""Per-episode quality scores and true progress on small, physically plausible Ant and arm episodes."""
from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from foundations.profile import load_profile
from foundations.schema import ACTION
from quality.score_model import load_score_model
from quality.scores import (
    COMPONENTS,
    DEFAULT_WEIGHTS,
    episode_progress,
    score_episodes,
    score_histogram_png,
    step_progress,
)
from synthetic_episodes import DT, arm_episode, arm_profile, episode, table

N = 100
TRAVEL = 0.5 * (N - 1) * DT  # metres (walker, 0.5 m/s) or radians (turners, 0.5 rad/s) by the last step
ANT = load_profile("ant")


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    bang = episode("walker", "bang_bang", n=N, seed=6).with_columns(pl.col(ACTION).list.eval(pl.element().sign()))
    return table(
        episode("walker", "walker", n=N),
        episode("idle", "idle", n=N),
        episode("flail", "flail", n=N, seed=3),
        episode("turn_left", "left", n=N, yaw0=2.5),  # crosses +pi on the way
        episode("turn_right", "right", n=N, yaw0=-2.5),  # crosses -pi on the way
        episode("turn_left", "wrong_way", n=N, instruction="turn right"),
        episode("walker", "fell", n=60, terminal=True),
        episode("walker", "quit_early", n=50),
        episode("walker", "dancer", n=N, instruction="dance"),
        episode("hesitant", "hesitant", n=N, seed=5),
        bang,
    )


@pytest.fixture(scope="module")
def scores(fleet) -> pl.DataFrame:
    return score_episodes(fleet, ANT)


def _row(scores: pl.DataFrame, episode_id: str) -> dict:
    return scores.filter(pl.col("episode_id") == episode_id).row(0, named=True)


def test_one_row_per_episode_with_components_in_unit_interval(fleet, scores):
    assert scores.get_column("episode_id").to_list() == sorted(fleet.get_column("episode_id").unique())
    for name in [*COMPONENTS, "quality_score"]:
        values = scores.get_column(name).drop_nulls()
        assert ((values >= 0) & (values <= 1)).all(), name
    assert scores.get_column("quality_score").null_count() == 0


def test_steady_walker_beats_idle_robot_beats_flailing(scores):
    walker, idle, flail = (_row(scores, e) for e in ("walker", "idle", "flail"))
    # Standing still and flailing both get nowhere; the weights put what the robot did over time
    # before how jerky it was, so neither has to beat the other, and the walker beats both. A
    # flailer neither pauses nor pins its commands, so hesitation and saturation do not lower it.
    assert walker["quality_score"] > max(idle["quality_score"], flail["quality_score"]) + 0.45
    assert walker["progress"] == 1.0 and idle["progress"] == 0.0
    assert idle["idle"] == 0.0 and walker["idle"] == 1.0
    assert walker["smoothness"] > 0.9 > 0.2 > flail["smoothness"]
    assert flail["action_jerk"] > 10 * walker["action_jerk"]


def test_progress_follows_initial_heading_and_signed_unwrapped_yaw(scores):
    walker, left, right, wrong = (_row(scores, e) for e in ("walker", "left", "right", "wrong_way"))
    assert walker["progress_raw"] == pytest.approx(TRAVEL, rel=1e-4)  # along yaw0 = 0.7 rad, not along x
    assert left["progress_raw"] == pytest.approx(TRAVEL, rel=1e-4)
    assert right["progress_raw"] == pytest.approx(-TRAVEL, rel=1e-4)
    assert left["progress"] == pytest.approx(TRAVEL / 3.0, rel=1e-4)
    assert right["progress"] == pytest.approx(TRAVEL / 3.0, rel=1e-4)
    assert wrong["progress_raw"] > 0 and wrong["progress"] == 0.0  # turned left when told to turn right


def test_step_progress_is_cumulative_and_ends_at_episode_progress(fleet):
    walker = fleet.filter(pl.col("episode_id") == "walker")
    steps = step_progress(walker, ANT)
    raw = steps.get_column("progress_raw").to_numpy()
    assert steps.height == N and raw[0] == 0.0
    assert np.all(np.diff(raw) > 0)
    final = episode_progress(walker, ANT)
    assert final.item(0, "progress_raw") == pytest.approx(raw[-1])


def test_unknown_instruction_gives_null_progress_with_a_visible_reason(scores):
    dancer = _row(scores, "dancer")
    assert dancer["progress"] is None and dancer["progress_raw"] is None
    assert "unknown instruction 'dance'" in dancer["progress_note"]
    assert 0.0 <= dancer["quality_score"] <= 1.0
    assert _row(scores, "walker")["progress_note"] is None


def test_completeness_zero_after_a_fall_and_partial_when_quitting_early(scores):
    assert _row(scores, "fell")["completeness"] == 0.0
    assert _row(scores, "fell")["terminal"] is True
    assert _row(scores, "quit_early")["completeness"] == pytest.approx(50 / N)
    assert _row(scores, "walker")["completeness"] == 1.0


def test_hesitation_and_saturation_lower_their_components(scores):
    hesitant = _row(scores, "hesitant")
    assert hesitant["idle_fraction"] == pytest.approx(0.5, abs=0.03)
    assert hesitant["idle"] == pytest.approx(1 - hesitant["idle_fraction"])
    bang = _row(scores, "bang_bang")
    assert bang["saturation"] < 0.1 < 0.99 < _row(scores, "walker")["saturation"]
    assert bang["quality_score"] < _row(scores, "walker")["quality_score"]


def test_passed_weights_give_the_weighted_mean_of_present_components(fleet):
    weights = {**{c: 0.0 for c in COMPONENTS}, "progress": 1.0, "idle": 1.0}
    custom = score_episodes(fleet, ANT, weights=weights)
    hesitant = _row(custom, "hesitant")
    assert hesitant["quality_score"] == pytest.approx((hesitant["progress"] + hesitant["idle"]) / 2)
    # Empty weights are DEFAULT_WEIGHTS: a null progress drops out and the other weights are renormalised.
    dancer = _row(score_episodes(fleet, ANT, weights={}), "dancer")
    rest = [c for c in COMPONENTS if dancer[c] is not None]
    assert "progress" not in rest and "on_task" not in rest  # both need the instruction's skill
    expected = sum(DEFAULT_WEIGHTS[c] * dancer[c] for c in rest) / sum(DEFAULT_WEIGHTS[c] for c in rest)
    assert dancer["quality_score"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown score components"):
        score_episodes(fleet, ANT, weights={"speed": 1.0})
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        score_episodes(fleet, ANT, weights={"progress": -1.0})


def test_the_default_score_is_the_shipped_model_and_monotone_in_every_component(scores):
    model = load_score_model()
    assert model.components == COMPONENTS and model.value.shape[0] > 0
    x = scores.select(COMPONENTS).to_numpy().astype(float)
    assert scores["quality_score"].to_numpy() == pytest.approx(model.probability(x), abs=1e-12)
    # Raising any one component (nulls stay null) never lowers a score, on these episodes and on random ones.
    rng = np.random.default_rng(0)
    grid = np.vstack([x, rng.uniform(0, 1, (500, len(COMPONENTS)))])
    grid[rng.uniform(size=grid.shape) < 0.1] = np.nan
    base = model.log_odds(grid)
    for i in range(len(COMPONENTS)):
        raised = grid.copy()
        raised[:, i] = np.where(np.isnan(grid[:, i]), np.nan, np.minimum(1.0, grid[:, i] + 0.2))
        assert (model.log_odds(raised) >= base - 1e-12).all(), COMPONENTS[i]
    assert np.ptp(base) > 1.0  # it separates, it is not flat
    with pytest.raises(ValueError, match="components"):
        model.probability(x[:, :3])


def test_nominal_steps_and_bad_profiles(fleet):
    fixed = score_episodes(fleet, ANT, nominal_steps=200)
    assert _row(fixed, "walker")["completeness"] == pytest.approx(0.5)
    with pytest.raises(ValidationError, match="forward_m"):
        ANT.model_validate({**ANT.model_dump(), "skills": {"walk forward": {"measure": "speed_m", "target": 1.0}}})
    with pytest.raises(ValueError, match="repeats"):
        score_episodes(pl.concat([fleet, fleet.head(3)]), ANT)
    with pytest.raises(TypeError, match="RobotProfile"):
        score_episodes(fleet, {"walk forward": {"measure": "forward_m", "target": 2.0}})


def test_histogram_png_is_a_readable_image(scores):
    png = score_histogram_png(scores)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[0] >= 500 and image.shape[1] >= 900
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_a_profile_written_to_yaml_scores_like_the_repository_one(fleet, scores, tmp_path):
    import yaml

    path = tmp_path / "ant.yaml"
    path.write_text(yaml.safe_dump(ANT.model_dump(mode="json")), encoding="utf-8")
    assert score_episodes(fleet, load_profile(path)).equals(scores)


def test_without_joint_velocities_smoothness_is_the_action_term_alone(fleet, scores):
    bare = score_episodes(fleet, ANT.model_copy(update={"joint_velocity": None}))
    assert bare["joint_jerk"].null_count() == bare.height
    for name in ("walker", "flail"):
        row = _row(bare, name)
        assert row["smoothness"] == pytest.approx(1 / (1 + (row["action_jerk"] / 0.3) ** 2))
    # Progress, completeness and saturation do not read joint velocities.
    assert bare.select("progress", "completeness", "saturation").equals(scores.select("progress", "completeness",
                                                                                      "saturation"))
    assert _row(bare, "idle")["idle"] == 0.0 and _row(bare, "walker")["idle"] == 1.0


# ---------------------------------------------------------------------------------------------
# An arm: no base pose, an end effector and a target.

ARM = arm_profile()


@pytest.fixture(scope="module")
def arm_fleet() -> pl.DataFrame:
    return table(
        arm_episode("reacher", "reacher"),
        arm_episode("away", "away"),
        arm_episode("arm_idle", "idle"),
        arm_episode("arm_flail", "flail", seed=3),
        arm_episode("sweep_left", "sweep_left", q1_0=2.5),  # the bearing crosses +pi
        arm_episode("sweep_right", "sweep_right", q1_0=-2.5),  # and -pi
        arm_episode("reacher", "dancer", instruction="dance"),
    )


def test_arm_scores_read_the_end_effector_and_target(arm_fleet):
    scores = score_episodes(arm_fleet, ARM)
    reacher, away, idle, flail = (_row(scores, e) for e in ("reacher", "away", "idle", "flail"))
    assert reacher["progress_raw"] == pytest.approx(1.0, abs=1e-5) and reacher["progress"] == 1.0  # on the target
    assert away["progress_raw"] < -1.0 and away["progress"] == 0.0  # moved away: negative, clipped to 0
    assert idle["progress_raw"] == 0.0 and idle["idle"] == 0.0 and idle["smoothness"] == 1.0
    # The reacher holds still at the target for the last 40 % of the episode, with zero commands:
    # the task is done, so that is not idling. The one that left the target and stopped is idle.
    assert reacher["idle_fraction"] == 0.0 and away["idle_fraction"] == pytest.approx(0.4, abs=0.05)
    assert flail["idle"] == 1.0 and flail["smoothness"] < 0.6 < 0.99 < reacher["smoothness"]
    # Standing still and flailing both do nothing toward the target; the time-aware components
    # see that the flailing arm drifted toward it now and then, so only the reacher must lead.
    assert reacher["quality_score"] > max(idle["quality_score"], flail["quality_score"]) + 0.3
    assert reacher["quality_score"] > away["quality_score"]
    left, right = _row(scores, "sweep_left"), _row(scores, "sweep_right")
    swept = 0.5 * 59 * DT  # rad at 0.5 rad/s; the bearing of a two-link arm turns with its shoulder
    assert left["progress_raw"] == pytest.approx(swept, rel=1e-4) and right["progress_raw"] == pytest.approx(-swept, rel=1e-4)
    assert left["progress"] == pytest.approx(swept / 1.5, rel=1e-4) == right["progress"]
    assert "unknown instruction 'dance'" in _row(scores, "dancer")["progress_note"]
    for name in [*COMPONENTS, "quality_score"]:
        values = scores.get_column(name).drop_nulls()
        assert ((values >= 0) & (values <= 1)).all(), name


def test_arm_without_joint_velocities_uses_end_effector_speed_and_commands(arm_fleet):
    scores = score_episodes(arm_fleet, arm_profile(joint_velocity=False))
    assert scores["joint_jerk"].null_count() == scores.height
    assert _row(scores, "idle")["idle"] == 0.0 and _row(scores, "sweep_left")["idle"] == 1.0
    assert _row(scores, "away")["idle_fraction"] == pytest.approx(0.4, abs=0.05)
    assert _row(scores, "reacher")["idle_fraction"] == 0.0
