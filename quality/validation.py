"""Validation of the canonical episode table with a Great Expectations 1.x suite.

The suite covers, per step: required columns and features not null (a null feature is a
gap in its topic), feature lengths, finite values, action bounds, timestamps increasing,
control-rate jitter (each time step within a tolerance of 1/rate), contiguous step
indices 0..T-1, RLDS markers, and camera frames (each decodes, has the declared size, is not
black, and has not stayed byte-identical for `frozen_s` seconds; an episode with no frame at all had no
camera, which is not a failure); per episode: length within
[min_steps, max_steps] and one instruction. The schema (column names and types) is checked first, table-wide; a
mismatch refuses the whole table with a `ValidationError` that lists what to fix.

Every failing row is mapped back to its episode, and each (episode, check, subject) with
failures becomes one rejection row in `foundations.schema.QUARANTINE_SCHEMA` with a
readable reason. An episode with any rejection is left out of `accepted`; every input
episode_id ends up in exactly one of `accepted` and `rejected` (rows whose episode_id is
null are rejected with a null episode_id and their source file).

Check names in rejections: not_null, feature_dims, finite_values, action_bounds,
timestamps_monotonic, control_rate, step_contiguous, rlds_markers, frame_decodable, frame_size,
frame_black, frame_frozen, episode_length, instruction_constant (and schema, which raises instead).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import polars as pl

from foundations.schema import ACTION, LINEAGE, QUARANTINE_SCHEMA, empty_quarantine
from quality import check_frames as cf
from quality.gx_suite import DEFAULT_BATCH_ROWS, ExpectationOutcome, describe_kwargs, expectation, run_suite
from quality.text import fixed, fixed_value, integer

STAGE = "validation"
# Allowed deviation of a time step from the control period, as a fraction of that period.
DEFAULT_RATE_TOLERANCE = 0.2
MIN_TRANSITION_STEPS = 2  # the shortest episode that still holds one transition
# A frame darker than this mean grey level (of 255) is black: a covered lens or a dead sensor.
BLACK_LEVEL = 8.0
# A camera whose frame has not changed (identical bytes) for this long is frozen: real sensors are noisy,
# so a live camera never repeats a frame; as-of alignment repeats one only until the next arrives.
DEFAULT_FROZEN_S = 2.0


class ValidationError(ValueError):
    """The table cannot be validated at all (wrong schema or arguments); the message says what to fix."""


@dataclass
class ValidationReport:
    """Outcome of `validate_episodes`.

    accepted: the input rows of episodes that passed every expectation (input order kept).
    rejected: QUARANTINE_SCHEMA rows, one per (episode, check, subject) that failed.
    summary: JSON-friendly dict: per expectation its name, check, subject, success,
        unexpected count and episodes affected; and totals (rows, episodes, accepted,
        rejected, success).
    """

    accepted: pl.DataFrame
    rejected: pl.DataFrame
    summary: dict[str, Any]


@dataclass(frozen=True)
class _Check:
    """One expectation of the suite and how its failures read in a rejection."""

    check: str  # the quarantine `check` name
    subject: str  # what it is about (a column); one rejection row per (episode, check, subject)
    level: Literal["step", "episode"]
    expectation: Any  # a GX Expectation; its meta name is `check:subject[:suffix]`
    value: pl.Expr  # quoted in the reason, from the row picked by `severity`
    severity: pl.Expr  # larger is worse

    @property
    def name(self) -> str:
        return self.expectation.meta["name"]


@dataclass(frozen=True)
class _Params:
    rate_hz: float
    period: float
    tolerance: float
    low: float
    high: float
    min_steps: int
    max_steps: int
    dims: dict[str, int]
    shapes: dict[str, str]  # camera feature -> expected frame shape "HxWxC"
    frozen_s: float


def _step_check(check: str, subject: str, kind: str, column: str, value: pl.Expr | None = None,
                severity: pl.Expr | None = None, suffix: str = "", **kwargs: Any) -> _Check:
    name = f"{check}:{subject}{suffix}"
    exp = expectation(kind, name, column=column, **kwargs)
    return _Check(check, subject, "step", exp, value if value is not None else pl.lit(None, pl.Float64),
                  severity if severity is not None else pl.lit(0.0))


def _build_checks(feats: list[cf.Feature], p: _Params, has_action_bounds: bool) -> list[_Check]:
    checks = [_step_check("not_null", "episode_id", "ExpectColumnValuesToNotBeNull", cf.EPISODE)]
    checks += [_step_check("not_null", c, "ExpectColumnValuesToNotBeNull", c) for c in cf.REQUIRED_NOT_NULL]
    checks.append(_step_check("not_null", "language_instruction", "ExpectColumnValuesToNotBeNull", "instruction"))
    for f in feats:
        checks.append(_step_check("not_null", f.column, "ExpectColumnValuesToNotBeNull", f.present_column))
        if f.kind == "image":
            checks += _frame_checks(f, p)
        if f.kind != "list":
            continue
        if f.column in p.dims:
            dim = pl.col(f.dim_column)
            checks.append(_step_check("feature_dims", f.column, "ExpectColumnValuesToBeInSet", f.dim_column,
                                      value=dim, severity=(dim - p.dims[f.column]).abs(), value_set=[p.dims[f.column]]))
        checks.append(_step_check("finite_values", f.column, "ExpectColumnValuesToBeInSet", f.finite_column,
                                  value_set=[True]))
    dt = pl.col("dt")
    checks += [
        _step_check("finite_values", "timestamp", "ExpectColumnValuesToBeInSet", "timestamp_finite", value_set=[True]),
        _step_check("timestamps_monotonic", "timestamp", "ExpectColumnValuesToBeBetween", "dt",
                    value=dt, severity=-dt, min_value=0.0, strict_min=True),
        _step_check("control_rate", "timestamp", "ExpectColumnValuesToBeBetween", "dt_forward",
                    value=pl.col("dt_forward"), severity=(pl.col("dt_forward") - p.period).abs(),
                    min_value=p.period - p.tolerance, max_value=p.period + p.tolerance),
        _step_check("step_contiguous", "step", "ExpectColumnValuesToBeInSet", "step_delta",
                    value=pl.col("step_delta"), severity=(pl.col("step_delta") - 1).abs(), value_set=[1]),
        _step_check("rlds_markers", "is_first/is_last/is_terminal", "ExpectColumnValuesToBeInSet", "markers_ok",
                    value_set=[True]),
    ]
    if has_action_bounds:
        lo, hi = pl.col("action_min"), pl.col("action_max")
        checks += [
            _step_check("action_bounds", ACTION, "ExpectColumnValuesToBeBetween", "action_min", value=lo,
                        severity=p.low - lo, suffix=":min", min_value=p.low),
            _step_check("action_bounds", ACTION, "ExpectColumnValuesToBeBetween", "action_max", value=hi,
                        severity=hi - p.high, suffix=":max", max_value=p.high),
        ]
    n = pl.col("n_steps")
    checks += [
        _Check("episode_length", "episode", "episode",
               expectation("ExpectColumnValuesToBeBetween", "episode_length:episode", column="n_steps",
                           min_value=MIN_TRANSITION_STEPS, max_value=p.max_steps), n, pl.lit(0.0)),
        _Check("episode_length", "episode", "episode",
               expectation("ExpectColumnValuesToBeBetween", "episode_length:episode:truncated",
                           column="n_steps_truncated", min_value=p.min_steps), n, pl.lit(0.0)),
        _Check("instruction_constant", "language_instruction", "episode",
               expectation("ExpectColumnValuesToBeBetween", "instruction_constant:language_instruction",
                           column="n_instructions", max_value=1), pl.col("n_instructions"), pl.lit(0.0)),
    ]
    return checks


def _frame_checks(f: cf.Feature, p: _Params) -> list[_Check]:
    """A camera's frames decode, have the expected size, are not black and do not freeze."""
    bright, still = pl.col(f.frame_column("brightness")), pl.col(f.frame_column("still_s"))
    checks = [_step_check("frame_decodable", f.column, "ExpectColumnValuesToBeInSet", f.frame_column("decodes"),
                          value_set=[True])]
    if f.column in p.shapes:
        checks.append(_step_check("frame_size", f.column, "ExpectColumnValuesToBeInSet", f.frame_column("shape"),
                                  value_set=[p.shapes[f.column]]))
    checks += [
        _step_check("frame_black", f.column, "ExpectColumnValuesToBeBetween", f.frame_column("brightness"),
                    value=bright, severity=-bright, min_value=BLACK_LEVEL),
        _step_check("frame_frozen", f.column, "ExpectColumnValuesToBeBetween", f.frame_column("still_s"),
                    value=still, severity=still, max_value=p.frozen_s),
    ]
    return checks


def _reason_templates(p: _Params) -> dict[str, Callable[[], pl.Expr]]:
    """Reason sentence per check, built from the aggregated failure columns:
    subject, n_bad, n_steps, first_step, worst_value, worst_step."""
    subject, n_bad, n = pl.col("subject"), integer(pl.col("n_bad")), integer(pl.col("n_steps"))
    first, worst_step, v = integer(pl.col("first_step")), integer(pl.col("worst_step")), pl.col("worst_value")
    where = pl.concat_str([pl.lit(" at "), n_bad, pl.lit(" of "), n, pl.lit(" steps (first at step "), first,
                           pl.lit(")")])
    rate = f"(control period {fixed_value(p.period, 3)} s +- {fixed_value(p.tolerance, 3)} s)"
    return {
        "not_null": lambda: pl.concat_str([
            subject, pl.lit(" is null"), where,
            pl.when(subject.str.starts_with("observation.") | (subject == ACTION))
            .then(pl.lit(": its topic had no message close enough to those control steps")).otherwise(pl.lit(""))]),
        "feature_dims": lambda: pl.concat_str([subject, pl.lit(" has "), integer(v), pl.lit(" values instead of "),
                                               subject.replace_strict(p.dims, default=None, return_dtype=pl.Int64)
                                               .cast(pl.String).fill_null("?"), where]),
        "finite_values": lambda: pl.concat_str([subject, pl.lit(" has non-finite values"), where]),
        "timestamps_monotonic": lambda: pl.concat_str([
            pl.lit("timestamps do not increase"), where, pl.lit("; worst step interval "), fixed(v, 3),
            pl.lit(" s at step "), worst_step]),
        "control_rate": lambda: pl.concat_str([
            pl.when(v > p.period).then(pl.lit("timestamps jump by ")).otherwise(pl.lit("timestamps advance only ")),
            fixed(v, 2), pl.lit(" s at step "), worst_step, pl.lit(f" {rate}; "), n_bad,
            pl.lit(" of "), n, pl.lit(" steps off the rate (first at step "), first, pl.lit(")")]),
        "step_contiguous": lambda: pl.concat_str([
            pl.lit("step indices are not contiguous from 0"), where, pl.lit("; index jumps by "), integer(v),
            pl.lit(" at step "), worst_step]),
        "rlds_markers": lambda: pl.concat_str([
            pl.lit("is_first/is_last/is_terminal are inconsistent"), where,
            pl.lit(": is_first must mark only the first step, is_last only the last, is_terminal only a last step")]),
        "action_bounds": lambda: pl.concat_str([
            pl.lit(f"action leaves the bounds [{fixed_value(p.low)}, {fixed_value(p.high)}]"), where,
            pl.lit("; extreme value "), fixed(v, 2), pl.lit(" at step "), worst_step]),
        "episode_length": lambda: pl.concat_str([
            pl.lit("episode has "), n, pl.lit(" steps; "),
            pl.when(pl.col("n_steps") < MIN_TRANSITION_STEPS)
            .then(pl.lit(f"at least {MIN_TRANSITION_STEPS} are needed for one transition"))
            .when(pl.col("n_steps") < p.min_steps)
            .then(pl.lit(f"at least {p.min_steps} are required unless it ends in a fall (is_terminal)"))
            .otherwise(pl.lit(f"at most {p.max_steps} are allowed"))]),
        "frame_decodable": lambda: pl.concat_str([
            subject, pl.lit(" frames do not decode as images (corrupt or not JPEG/PNG)"), where]),
        "frame_size": lambda: pl.concat_str([
            subject, pl.lit(" frames are not "), subject.replace_strict(p.shapes, default=None, return_dtype=pl.String)
            .fill_null("?"), pl.lit(" (height x width x channels)"), where,
            pl.lit("; fix the camera settings or the declared shape in the source mapping")]),
        "frame_black": lambda: pl.concat_str([
            subject, pl.lit(f" is black (mean grey level below {fixed_value(BLACK_LEVEL, 0)} of 255)"), where,
            pl.lit("; darkest "), fixed(v, 1), pl.lit(" at step "), worst_step,
            pl.lit(": a covered lens or a dead sensor")]),
        "frame_frozen": lambda: pl.concat_str([
            subject, pl.lit(f" is frozen (the same frame for more than {fixed_value(p.frozen_s, 1)} s)"), where,
            pl.lit("; one frame lasts "), fixed(v, 2), pl.lit(" s up to step "), worst_step,
            pl.lit(": the camera driver stopped updating")]),
        "instruction_constant": lambda: pl.concat_str([
            pl.lit("language_instruction changes within the episode ("), integer(v), pl.lit(" distinct values)")]),
    }


def _failures(df: pl.DataFrame, steps: pl.DataFrame, episodes: pl.DataFrame, checks: list[_Check],
              outcomes: dict[str, ExpectationOutcome]) -> pl.DataFrame:
    """Failing rows of every check, with their episode, step, quoted value and severity."""
    lineage = df.select("episode_id", *LINEAGE, "step")
    parts = []
    for chk in checks:
        idx = pl.Series(outcomes[chk.name].unexpected_index, dtype=pl.Int64)
        if idx.is_empty():
            continue
        if chk.level == "step":
            picked = steps[idx].select(
                key=pl.col(cf.ROW), value=chk.value.cast(pl.Float64), severity=chk.severity.cast(pl.Float64))
            ids = lineage[idx]
        else:
            picked = episodes[idx].select(key=pl.col(cf.EPISODE), value=chk.value.cast(pl.Float64),
                                          severity=chk.severity.cast(pl.Float64))
            ids = episodes[idx].select("episode_id", *LINEAGE, step=pl.lit(None, pl.Int32))
        parts.append(pl.concat([ids, picked], how="horizontal").with_columns(
            check=pl.lit(chk.check), subject=pl.lit(chk.subject), expectation=pl.lit(chk.name)))
    return pl.concat(parts) if parts else pl.DataFrame()


def _rejections(failures: pl.DataFrame, n_steps: pl.DataFrame, p: _Params) -> pl.DataFrame:
    """One QUARANTINE_SCHEMA row per (episode, check, subject), with a readable reason."""
    if failures.is_empty():
        return empty_quarantine()
    by_severity = pl.col("severity").fill_null(0.0)
    agg = (
        failures.group_by("episode_id", *LINEAGE, "check", "subject", maintain_order=True)
        .agg(
            n_bad=pl.col("key").n_unique(),
            first_step=pl.col("step").min(),
            worst_value=pl.col("value").sort_by(by_severity, descending=True).first(),
            worst_step=pl.col("step").sort_by(by_severity, descending=True).first(),
        )
        .join(n_steps, on="episode_id", how="left", nulls_equal=True)
    )
    templates = _reason_templates(p)
    reason = pl.lit(None, pl.String)
    for check in agg.get_column("check").unique().to_list():
        reason = pl.when(pl.col("check") == check).then(templates[check]()).otherwise(reason)
    return (
        agg.with_columns(stage=pl.lit(STAGE), reason=reason)
        .select(list(QUARANTINE_SCHEMA))
        .cast(QUARANTINE_SCHEMA)
        .sort("episode_id", "check", "reason", nulls_last=True)
    )


def _check_schema(df: pl.DataFrame, batch_rows: int) -> dict[str, Any]:
    frame = cf.schema_frame(df)
    exp = expectation("ExpectColumnPairValuesToBeEqual", "schema:columns", column_A="observed",
                      column_B="expected", ignore_row_if="neither")
    outcome = run_suite(frame, "position", [exp], batch_rows)["schema:columns"]
    bad = frame[pl.Series(outcome.unexpected_index, dtype=pl.Int64)]
    if not bad.is_empty():
        missing = bad.filter(pl.col("observed").is_null())
        mistyped = bad.filter(pl.col("observed").is_not_null())
        problems = []
        if missing.height:
            problems.append("missing columns: " + ", ".join(missing.get_column("column")))
        if mistyped.height:
            rows = mistyped.select("column", "observed", "expected").iter_rows()
            problems.append("mistyped columns: " + ", ".join(f"{c} is {o}, expected {e}" for c, o, e in rows))
        raise ValidationError(
            "the episode table does not match the canonical schema (foundations/schema.py): "
            + "; ".join(problems) + ". Fix the ingestion so it writes these columns with these types.")
    return {**outcome.as_dict(), "check": "schema", "subject": "columns", "episodes_affected": 0}


def _params(steps: pl.DataFrame, feats: list[cf.Feature], rate_hz: float,
            action_bounds: tuple[float, float], min_steps: int, max_steps: int,
            dt_tolerance_s: float | None, feature_dims: dict[str, int] | None,
            image_shapes: dict[str, tuple[int, int, int]] | None, frozen_s: float) -> _Params:
    dims = cf.modal_dims(steps, feats)
    dims.update(feature_dims or {})
    shapes = cf.modal_shapes(steps, feats)
    shapes.update({name: "x".join(map(str, shape)) for name, shape in (image_shapes or {}).items()})
    period = 1.0 / rate_hz
    tol = DEFAULT_RATE_TOLERANCE * period if dt_tolerance_s is None else float(dt_tolerance_s)
    return _Params(rate_hz, period, tol, float(action_bounds[0]), float(action_bounds[1]), min_steps, max_steps, dims,
                   shapes, float(frozen_s))


def _check_arguments(rate_hz: float, action_bounds: tuple[float, float], min_steps: int, max_steps: int,
                     dt_tolerance_s: float | None) -> None:
    problems = []
    if not rate_hz > 0:
        problems.append(f"rate_hz must be positive, got {rate_hz}")
    if len(action_bounds) != 2 or not action_bounds[0] < action_bounds[1]:
        problems.append(f"action_bounds must be (low, high) with low < high, got {action_bounds}")
    if not 1 <= min_steps <= max_steps:
        problems.append(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}")
    if dt_tolerance_s is not None and not dt_tolerance_s >= 0:
        problems.append(f"dt_tolerance_s must be >= 0, got {dt_tolerance_s}")
    if problems:
        raise ValidationError("; ".join(problems))


def validate_episodes(
    df: pl.DataFrame,
    rate_hz: float,
    action_bounds: tuple[float, float],
    min_steps: int = 20,
    max_steps: int = 10000,
    *,
    dt_tolerance_s: float | None = None,
    feature_dims: dict[str, int] | None = None,
    image_shapes: dict[str, tuple[int, int, int]] | None = None,
    frozen_s: float = DEFAULT_FROZEN_S,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> ValidationReport:
    """Run the validation suite over an episode table and split it into accepted rows and rejections.

    rate_hz: control rate; each time step must lie within `dt_tolerance_s` (default 20 % of
        the period, 0.010 s at 20 Hz) of 1/rate_hz.
    action_bounds: (low, high) every finite action value must lie in.
    min_steps, max_steps: allowed episode length in steps.
    feature_dims: expected length per list feature (e.g. {"observation.state": 27}); a
        feature not named here must have the length most common in the table.
    image_shapes: declared frame shape (height, width, channels) per camera feature (the source
        mapping's `shape:`); a camera not named here must have the shape most common in the table.
    frozen_s: a camera whose frame stays byte-identical longer than this (seconds) is frozen.
    batch_rows: rows per pandas batch handed to GX (bounds memory).

    Raises ValidationError when the table's schema does not match the canonical one or an
    argument is invalid; bad data never raises, it is rejected per episode.
    """
    _check_arguments(rate_hz, action_bounds, min_steps, max_steps, dt_tolerance_s)
    schema_result = _check_schema(df, batch_rows)
    feats = cf.features(df)
    steps = cf.step_frame(df, feats)
    episodes = cf.episode_frame(df)
    p = _params(steps, feats, rate_hz, action_bounds, min_steps, max_steps, dt_tolerance_s, feature_dims,
                image_shapes, frozen_s)
    checks = _build_checks(feats, p, has_action_bounds="action_min" in steps.columns)

    outcomes: dict[str, ExpectationOutcome] = {}
    if df.height:
        step_checks = [c for c in checks if c.level == "step"]
        gx_columns = list(dict.fromkeys([cf.ROW, *(c.expectation.configuration.kwargs["column"] for c in step_checks)]))
        outcomes |= run_suite(steps.select(gx_columns), cf.ROW, [c.expectation for c in step_checks], batch_rows)
        episode_checks = [c for c in checks if c.level == "episode"]
        outcomes |= run_suite(episodes.select(cf.EPISODE, "n_steps", "n_steps_truncated", "n_instructions"), cf.EPISODE,
                              [c.expectation for c in episode_checks], batch_rows)

    failures = _failures(df, steps, episodes, checks, outcomes) if outcomes else pl.DataFrame()
    n_steps = df.group_by("episode_id").agg(n_steps=pl.len().cast(pl.Int64))
    rejected = _rejections(failures, n_steps, p)
    rejected_ids = rejected.get_column("episode_id").drop_nulls().unique()
    accepted = df.filter(pl.col("episode_id").is_not_null() & ~pl.col("episode_id").is_in(rejected_ids.implode()))
    summary = _summary(df, accepted, rejected, checks, outcomes, failures, schema_result, p, batch_rows)
    return ValidationReport(accepted=accepted, rejected=rejected, summary=summary)


def _summary(df: pl.DataFrame, accepted: pl.DataFrame, rejected: pl.DataFrame, checks: list[_Check],
             outcomes: dict[str, ExpectationOutcome], failures: pl.DataFrame, schema_result: dict[str, Any],
             p: _Params, batch_rows: int) -> dict[str, Any]:
    affected: dict[str, int] = {}
    if not failures.is_empty():
        counts = failures.group_by("expectation").agg(pl.col("episode_id").n_unique())
        affected = {name: int(n) for name, n in counts.iter_rows()}
    expectations = [schema_result]
    for chk in checks:
        out = outcomes.get(chk.name)
        config = chk.expectation.configuration
        row = out.as_dict() if out else {
            "name": chk.name, "expectation": config.type, "column": config.kwargs.get("column"),
            "kwargs": describe_kwargs(config.kwargs), "success": True, "element_count": 0, "unexpected_count": 0}
        expectations.append({**row, "check": chk.check, "subject": chk.subject,
                             "episodes_affected": affected.get(chk.name, 0)})
    n_episodes = df.get_column("episode_id").drop_nulls().n_unique()
    return {
        "success": all(e["success"] for e in expectations),
        "rows": df.height,
        "episodes": n_episodes,
        "accepted_episodes": accepted.get_column("episode_id").n_unique(),
        "rejected_episodes": rejected.get_column("episode_id").drop_nulls().n_unique(),
        "rejection_rows": rejected.height,
        "rows_without_episode_id": int(df.get_column("episode_id").null_count()),
        "failed_expectations": [e["name"] for e in expectations if not e["success"]],
        "rate_hz": p.rate_hz,
        "dt_tolerance_s": p.tolerance,
        "action_bounds": [p.low, p.high],
        "min_steps": p.min_steps,
        "max_steps": p.max_steps,
        "feature_dims": dict(p.dims),
        "image_shapes": dict(p.shapes),
        "batch_rows": batch_rows,
        "expectations": expectations,
    }


def check_accepted(
    df: pl.DataFrame,
    rate_hz: float,
    action_bounds: tuple[float, float],
    min_steps: int = 20,
    max_steps: int = 10000,
    *,
    allow_empty: bool = False,
    **kwargs: Any,
) -> tuple[bool, dict[str, Any]]:
    """Re-run the suite over already accepted rows; True only when every expectation passes.

    Meant for a blocking Dagster asset check before publishing: returns (passed, summary)
    where the summary (JSON-friendly, see `validate_episodes`) carries a one-line
    `description` of what failed. A schema mismatch fails the check instead of raising.
    An empty table fails unless `allow_empty`, since there is nothing to publish.
    """
    try:
        report = validate_episodes(df, rate_hz, action_bounds, min_steps, max_steps, **kwargs)
    except ValidationError as err:
        schema = {"name": "schema:columns", "expectation": "expect_column_pair_values_to_be_equal",
                  "column": None, "kwargs": "column_A=observed, column_B=expected", "success": False,
                  "element_count": 0, "unexpected_count": 0, "check": "schema", "subject": "columns",
                  "episodes_affected": 0}
        return False, {"success": False, "description": str(err), "failed_expectations": [schema["name"]],
                       "expectations": [schema]}
    summary = dict(report.summary)
    passed = bool(summary["success"]) and report.rejected.is_empty() and (allow_empty or df.height > 0)
    if passed:
        description = f"all {len(summary['expectations'])} expectations pass on {summary['episodes']} episodes"
    elif df.height == 0:
        description = "no rows to check: the table is empty"
    else:
        reasons = report.rejected.get_column("reason").head(3).to_list()
        description = (f"{summary['rejected_episodes']} of {summary['episodes']} episodes fail "
                       f"{', '.join(summary['failed_expectations'])}; e.g. " + " | ".join(reasons))
    summary["description"] = description
    return passed, summary
