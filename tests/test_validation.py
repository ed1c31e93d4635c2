"""Validation suite (Great Expectations 1.x) over episode tables with planted problems."""
from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from foundations.schema import ACTION, QUARANTINE_SCHEMA, STATE
from quality.validation import ValidationError, check_accepted, validate_episodes
from synthetic_episodes import RATE_HZ, episode, table

BOUNDS = (-1.0, 1.0)
N = 100


def _at(steps, column: str, value) -> pl.Expr:
    """`column` replaced by `value` at the given steps."""
    return pl.when(pl.col("step").is_in(steps)).then(value).otherwise(pl.col(column)).alias(column)


def _planted() -> dict[str, pl.DataFrame]:
    """One episode per problem, plus clean ones (a walker, a turner, one that fell)."""
    e = {name: episode("walker", name, n=N, seed=i) for i, name in enumerate(
        ["clean", "nan_state", "gap", "jump", "backwards", "oob", "missing_step", "wrong_dim", "markers",
         "two_instructions"])}
    e["clean_turn"] = episode("turn_left", "clean_turn", n=N)
    e["clean_fall"] = episode("walker", "clean_fall", n=40, terminal=True)
    # A fall one second in is a real (short) outcome, not a fault.
    e["early_fall"] = episode("walker", "early_fall", n=12, terminal=True)
    e["nan_state"] = e["nan_state"].with_columns(_at([41, 50], STATE, pl.col(STATE).list.eval(pl.element() * np.nan)))
    e["gap"] = e["gap"].with_columns(_at([30, 31, 32, 33], STATE, None))
    e["jump"] = e["jump"].with_columns(pl.when(pl.col("step") >= 87).then(pl.col("timestamp") + 3.15)
                                       .otherwise(pl.col("timestamp")).alias("timestamp"))
    e["backwards"] = e["backwards"].with_columns(_at([60], "timestamp", pl.col("timestamp") - 0.2))
    e["oob"] = e["oob"].with_columns(_at([12], ACTION, pl.col(ACTION).list.eval(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(1.84, pl.Float32)).otherwise(pl.element()))))
    e["missing_step"] = e["missing_step"].filter(pl.col("step") != 50)
    e["wrong_dim"] = e["wrong_dim"].with_columns(_at([5], STATE, pl.col(STATE).list.head(26)))
    e["markers"] = e["markers"].with_columns(_at([50], "is_last", pl.lit(True)))
    e["two_instructions"] = e["two_instructions"].with_columns(
        _at(list(range(70, N)), "language_instruction", pl.lit("turn left")))
    e["short"] = episode("walker", "short", n=12)
    # Rows that lost their episode id cannot belong to any episode.
    e["no_id"] = episode("walker", "no_id", n=25).with_columns(episode_id=pl.lit(None, pl.String))
    return e


@pytest.fixture(scope="module")
def planted() -> dict[str, pl.DataFrame]:
    return _planted()


@pytest.fixture(scope="module")
def dirty(planted) -> pl.DataFrame:
    return table(*planted.values())


@pytest.fixture(scope="module")
def report(dirty):
    return validate_episodes(dirty, RATE_HZ, BOUNDS, min_steps=20, max_steps=10000)


def test_every_episode_is_accepted_or_rejected_exactly_once(dirty, report):
    ids = set(dirty.get_column("episode_id").drop_nulls())
    accepted = set(report.accepted.get_column("episode_id"))
    rejected = set(report.rejected.get_column("episode_id").drop_nulls())
    assert accepted | rejected == ids
    assert not accepted & rejected
    assert accepted == {"clean", "clean_turn", "clean_fall", "early_fall"}
    assert report.accepted.height == dirty.filter(pl.col("episode_id").is_in(list(accepted))).height
    summary = report.summary
    assert summary["episodes"] == len(ids) == summary["accepted_episodes"] + summary["rejected_episodes"]
    assert report.summary["rows_without_episode_id"] == 25
    assert report.rejected.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert set(report.rejected.get_column("stage")) == {"validation"}


@pytest.mark.parametrize(
    "episode_id, check, reason_pattern",
    [
        ("nan_state", "finite_values",
         r"observation\.state has non-finite values at 2 of 100 steps \(first at step 41\)"),
        ("gap", "not_null", r"observation\.state is null at 4 of 100 steps \(first at step 30\)"),
        ("jump", "control_rate", r"timestamps jump by 3\.20 s at step 87 \(control period 0\.050 s \+- 0\.010 s\)"),
        ("backwards", "timestamps_monotonic",
         r"do not increase at 1 of 100 steps \(first at step 60\); worst step interval -0\.150 s"),
        ("oob", "action_bounds",
         r"bounds \[-1\.00, 1\.00\] at 1 of 100 steps \(first at step 12\); extreme value 1\.84 at step 12"),
        ("missing_step", "step_contiguous", r"at 1 of 99 steps \(first at step 51\); index jumps by 2 at step 51"),
        ("missing_step", "control_rate", r"timestamps jump by 0\.10 s at step 51"),
        ("wrong_dim", "feature_dims",
         r"observation\.state has 26 values instead of 27 at 1 of 100 steps \(first at step 5\)"),
        ("markers", "rlds_markers", r"inconsistent at 1 of 100 steps \(first at step 50\)"),
        ("two_instructions", "instruction_constant", r"changes within the episode \(2 distinct values\)"),
        ("short", "episode_length", r"episode has 12 steps; at least 20 are required"),
    ],
)
def test_planted_problem_is_rejected_with_a_readable_reason(report, episode_id, check, reason_pattern):
    rows = report.rejected.filter((pl.col("episode_id") == episode_id) & (pl.col("check") == check))
    assert rows.height == 1, report.rejected.filter(pl.col("episode_id") == episode_id)
    assert re.search(reason_pattern, rows.item(0, "reason")), rows.item(0, "reason")
    assert rows.item(0, "source_file") == f"{episode_id}.mcap"


def test_planted_problems_do_not_leak_into_other_checks(report):
    # A NaN is not a gap, a gap is not a NaN, and an early timestamp is not a rate problem as well.
    checks = report.rejected.group_by("episode_id").agg(pl.col("check").unique().sort())
    by_id = dict(checks.iter_rows())
    assert by_id["nan_state"] == ["finite_values"]
    assert by_id["gap"] == ["not_null"]
    assert by_id["oob"] == ["action_bounds"]
    assert by_id["short"] == ["episode_length"]


def test_rows_without_episode_id_are_quarantined_not_dropped(report):
    rows = report.rejected.filter(pl.col("episode_id").is_null())
    assert rows.get_column("check").to_list() == ["not_null"]
    assert rows.item(0, "source_file") == "no_id.mcap"
    assert "episode_id is null at 25" in rows.item(0, "reason")


def test_summary_counts_each_expectation(report):
    by_name = {e["name"]: e for e in report.summary["expectations"]}
    assert by_name["schema:columns"]["success"]
    assert by_name["finite_values:observation.state"]["unexpected_count"] == 2
    assert by_name["finite_values:observation.state"]["episodes_affected"] == 1
    assert by_name["not_null:observation.state"]["unexpected_count"] == 4
    assert by_name["control_rate:timestamp"]["episodes_affected"] == 3  # jump, missing_step, backwards
    assert by_name["finite_values:action"]["success"]
    assert not report.summary["success"]
    assert report.summary["feature_dims"] == {"observation.state": 27, "action": 8, "observation.pose": 3}
    # The summary is a plain table for Dagster metadata: one row per expectation.
    table_view = pl.DataFrame(report.summary["expectations"])
    assert table_view.height == len(by_name) and {"expectation", "kwargs", "success"} <= set(table_view.columns)
    assert by_name["control_rate:timestamp"]["kwargs"].startswith("min_value=0.04")


def test_clean_rows_pass_the_blocking_check_and_dirty_rows_fail_it(dirty, report):
    passed, summary = check_accepted(report.accepted, RATE_HZ, BOUNDS)
    assert passed, summary["description"]
    assert summary["failed_expectations"] == []
    passed, summary = check_accepted(dirty, RATE_HZ, BOUNDS)
    assert not passed
    assert "finite_values:observation.state" in summary["failed_expectations"]
    assert re.search(r"\d+ of \d+ episodes fail", summary["description"])


def test_row_order_and_batch_size_do_not_change_the_outcome(dirty, report):
    shuffled = dirty.sample(fraction=1.0, shuffle=True, seed=7)
    small_batches = validate_episodes(shuffled, RATE_HZ, BOUNDS, batch_rows=300)
    assert small_batches.rejected.equals(report.rejected)
    assert set(small_batches.accepted.get_column("episode_id")) == set(report.accepted.get_column("episode_id"))


def test_wrong_schema_is_refused_with_what_to_fix(planted):
    df = planted["clean"].drop("timestamp").with_columns(pl.col("step").cast(pl.Int64))
    with pytest.raises(ValidationError) as err:
        validate_episodes(df, RATE_HZ, BOUNDS)
    message = str(err.value)
    assert "missing columns: timestamp" in message
    assert "step is Int64, expected Int32" in message
    passed, summary = check_accepted(df, RATE_HZ, BOUNDS)
    assert not passed and "missing columns: timestamp" in summary["description"]


def test_invalid_arguments_are_refused(planted):
    with pytest.raises(ValidationError, match="rate_hz must be positive"):
        validate_episodes(planted["clean"], 0.0, BOUNDS)
    with pytest.raises(ValidationError, match="low < high"):
        validate_episodes(planted["clean"], RATE_HZ, (1.0, -1.0))


def test_explicit_feature_dims_and_max_steps(planted):
    report = validate_episodes(planted["clean"], RATE_HZ, BOUNDS, min_steps=20, max_steps=50,
                               feature_dims={"observation.state": 29})
    checks = dict(report.rejected.select("check", "reason").iter_rows())
    assert checks["episode_length"] == "episode has 100 steps; at most 50 are allowed"
    assert "has 27 values instead of 29 at 100 of 100 steps" in checks["feature_dims"]


def test_empty_table_validates_to_nothing_and_fails_the_publish_check(planted):
    empty = planted["clean"].clear()
    report = validate_episodes(empty, RATE_HZ, BOUNDS)
    assert report.accepted.is_empty() and report.rejected.is_empty()
    assert check_accepted(empty, RATE_HZ, BOUNDS)[0] is False
    assert check_accepted(empty, RATE_HZ, BOUNDS, allow_empty=True)[0] is True


def test_an_arm_table_validates_with_its_own_features_and_bounds():
    from synthetic_episodes import EE, TARGET, arm_episode

    clean = [arm_episode(kind, kind, seed=i) for i, kind in enumerate(["reacher", "away", "arm_idle", "sweep_left"])]
    nan_ee = arm_episode("reacher", "nan_ee").with_columns(_at([7], EE, pl.lit([float("nan"), 0.1], pl.List(pl.Float32))))
    no_target = arm_episode("reacher", "no_target").with_columns(_at([9, 10], TARGET, None))
    strong = arm_episode("reacher", "strong").with_columns(pl.col(ACTION).list.eval(pl.element() * 3))  # peaks at 1.5
    report = validate_episodes(table(*clean, nan_ee, no_target, strong), RATE_HZ, (-1.0, 1.0), min_steps=20)
    assert set(report.accepted["episode_id"]) == {"reacher", "away", "arm_idle", "sweep_left"}
    reasons = {(r["episode_id"], r["check"]): r["reason"] for r in report.rejected.iter_rows(named=True)}
    assert set(reasons) == {("nan_ee", "finite_values"), ("no_target", "not_null"), ("strong", "action_bounds")}
    assert EE in reasons[("nan_ee", "finite_values")] and TARGET in reasons[("no_target", "not_null")]
    # Another robot's bounds are the caller's: the same commands pass within [-2, 2].
    wider = validate_episodes(table(*clean, strong), RATE_HZ, (-2.0, 2.0), min_steps=20)
    assert wider.rejected.is_empty() and wider.accepted.height == 5 * 60
