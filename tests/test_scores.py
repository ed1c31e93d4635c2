"""Per-episode quality scores and true progress on small, physically plausible Ant episodes."""
from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import polars as pl
import pytest

from foundations.schema import ACTION
from quality.scores import (
    COMPONENTS,
    DEFAULT_WEIGHTS,
    episode_progress,
    score_episodes,
    score_histogram_png,
    step_progress,
)
from synthetic_episodes import DT, SKILLS, episode, table

N = 100
TRAVEL = 0.5 * (N - 1) * DT  # metres (walker, 0.5 m/s) or radians (turners, 0.5 rad/s) by the last step


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
    return score_episodes(fleet, SKILLS)


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
    assert walker["quality_score"] > idle["quality_score"] > flail["quality_score"]
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
    steps = step_progress(walker, SKILLS)
    raw = steps.get_column("progress_raw").to_numpy()
    assert steps.height == N and raw[0] == 0.0
    assert np.all(np.diff(raw) > 0)
    final = episode_progress(walker, SKILLS)
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


def test_quality_score_is_the_weighted_mean_of_present_components(fleet, scores):
    weights = {"progress": 1.0, "smoothness": 0.0, "completeness": 0.0, "idle": 1.0, "saturation": 0.0}
    custom = score_episodes(fleet, SKILLS, weights=weights)
    hesitant = _row(custom, "hesitant")
    assert hesitant["quality_score"] == pytest.approx((hesitant["progress"] + hesitant["idle"]) / 2)
    # With the defaults, a null progress drops out and the other weights are renormalised.
    dancer = _row(scores, "dancer")
    rest = [c for c in COMPONENTS if c != "progress"]
    expected = sum(DEFAULT_WEIGHTS[c] * dancer[c] for c in rest) / sum(DEFAULT_WEIGHTS[c] for c in rest)
    assert dancer["quality_score"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown score components"):
        score_episodes(fleet, SKILLS, weights={"speed": 1.0})
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        score_episodes(fleet, SKILLS, weights={"progress": -1.0})


def test_nominal_steps_and_bad_skills(fleet):
    fixed = score_episodes(fleet, SKILLS, nominal_steps=200)
    assert _row(fixed, "walker")["completeness"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="measure 'speed_m'"):
        score_episodes(fleet, {"walk forward": {"measure": "speed_m", "target": 1.0}})


def test_histogram_png_is_a_readable_image(scores):
    png = score_histogram_png(scores)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert image.shape[0] >= 500 and image.shape[1] >= 900
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_skills_from_the_parsed_source_mapping_score_like_the_yaml_dicts(fleet, scores):
    from foundations.ingest import load_mapping

    parsed = load_mapping("ant_fleet_ros2").skills  # SkillSpec objects, not dicts
    assert score_episodes(fleet, parsed).equals(scores)
