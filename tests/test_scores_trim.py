"""Idle trims through a recipe: select_episodes drops them with filters.trim_idle, publish shows them in the card."""
from __future__ import annotations

import polars as pl
import pytest

from foundations.profile import load_profile
from foundations.publish import publish
from foundations.recipes import RecipeError, parse_recipe, select_episodes
from quality.scores import score_episodes
from synthetic_episodes import episode, table

ANT = load_profile("ant")
N = 100


@pytest.fixture(scope="module")
def episodes() -> pl.DataFrame:
    eps = table(episode("hesitant", "late_start", n=N), episode("walker", "walker", n=N), episode("idle", "idle", n=N))
    return eps.with_columns(pl.lit("ant_fleet_ros2").alias("source"))


@pytest.fixture(scope="module")
def scores(episodes) -> pl.DataFrame:
    # As the publish asset reads them: the episode table owns the instruction and the length.
    return score_episodes(episodes, ANT).drop("language_instruction", "n_steps")


def recipe(trim: bool | None):
    filters = {} if trim is None else {"trim_idle": trim}
    return parse_recipe({"name": "trimmed", "sources": ["ant_fleet_ros2"], "filters": filters})


def test_trim_idle_defaults_to_keeping_every_step(episodes, scores):
    assert recipe(None).filters.trim_idle is False
    selected, decisions = select_episodes(recipe(None), episodes, scores)
    assert selected.height == 3 * N and decisions["selected"].all()
    with pytest.raises(RecipeError, match="trim_idle"):
        parse_recipe({"name": "x", "sources": ["ant_fleet_ros2"], "filters": {"trim_idle": "sometimes"}})


def test_trim_idle_drops_idle_ends_and_moves_the_step_flags(episodes, scores):
    selected, decisions = select_episodes(recipe(True), episodes, scores)
    start = scores.filter(pl.col("episode_id") == "late_start")["idle_start_steps"][0]
    assert start > 30
    late = selected.filter(pl.col("episode_id") == "late_start")
    assert late.height == N - start and late["step"][0] == start  # step numbers stay as logged
    assert late["is_first"].to_list() == [True] + [False] * (late.height - 1)
    assert late["is_last"][-1] and late["is_last"].sum() == 1
    assert selected.filter(pl.col("episode_id") == "walker").height == N
    # Standing still from start to end leaves nothing: left out, with a reason.
    idle = decisions.filter(pl.col("episode_id") == "idle").row(0, named=True)
    assert not idle["selected"] and idle["check"] == "trim_idle" and "every one of its 100 steps is idle" in idle["reason"]
    assert "_trim_start" not in decisions.columns and "_trim_start" not in selected.columns


def test_trims_can_come_from_their_own_frame_and_must_exist(episodes, scores):
    trims = pl.DataFrame({"episode_id": ["late_start"], "idle_start_steps": [10], "idle_end_steps": [5]})
    selected, _ = select_episodes(recipe(True), episodes, scores.drop("idle_start_steps", "idle_end_steps"), trims)
    assert selected.filter(pl.col("episode_id") == "late_start")["step"].to_list() == list(range(10, N - 5))
    assert selected.filter(pl.col("episode_id") == "idle").height == N  # no trim record: every step kept
    with pytest.raises(ValueError, match="trim_idle.*idle_start_steps"):
        select_episodes(recipe(True), episodes, scores.drop("idle_start_steps"))
    with pytest.raises(ValueError, match="negative"):
        select_episodes(recipe(True), episodes, scores, trims.with_columns(pl.lit(-1).alias("idle_end_steps")))


def test_terminal_flag_survives_a_trimmed_end():
    fell = episode("walker", "fell", n=N, terminal=True).with_columns(pl.lit("ant_fleet_ros2").alias("source"))
    trims = pl.DataFrame({"episode_id": ["fell"], "idle_start_steps": [0], "idle_end_steps": [20]})
    selected, _ = select_episodes(recipe(True), fell, None, trims)
    assert selected.height == N - 20 and selected["is_terminal"].to_list()[-1] and selected["is_terminal"].sum() == 1


def test_card_shows_the_lowest_scoring_episodes_and_the_trims(episodes, scores, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBOCURATE_HOME", str(tmp_path / "home"))
    sources = pl.DataFrame({"source_file": [f"{e}.mcap" for e in ("late_start", "walker", "idle")],
                            "source_sha256": ["ab" * 32] * 3})
    for trim in (False, True):
        selected, _ = select_episodes(recipe(trim), episodes, scores)
        result = publish(recipe(trim), selected, sources=sources, validation={}, quality_stats={},
                         code_version="test", root=tmp_path / "hub")
        card = (result.path / "README.md").read_text(encoding="utf-8")
        assert "lowest-scoring episodes" in card and "| episode | instruction | quality_score | why it is low |" in card
        lowest = scores.sort("quality_score").row(0, named=True)
        if not trim:  # with trims on, the idle episode is left out
            assert f"| {lowest['episode_id']} | walk forward |" in card and lowest["explanation"] in card
        assert ("were dropped" if trim else "are kept") in card and "Idle ends:" in card
        meta = pl.read_parquet(result.path / "meta" / "episodes.parquet")
        late = meta.filter(pl.col("episode_id") == "late_start").row(0, named=True)
        assert late["n_steps"] == (N - late["idle_start_steps"] if trim else N)
        assert late["explanation"] and late["lowest_component"]
