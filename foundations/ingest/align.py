"""Split a decoded log into episodes and align its multi-rate topics to the control clock.

One canonical row per control message. Every other topic is joined with polars
`join_asof` (backward, tolerance = `control.tolerance_s`): a topic with no
message within the tolerance leaves that step's feature null, never filled, so
validation can quarantine it with a reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from foundations.ingest.mapping import FieldSpec, SourceMapping
from foundations.ingest.mcap_source import LOG_TIME, McapLog
from foundations.schema import POLARS_SCHEMA, QUARANTINE_SCHEMA, episode_id

SEP = "::"  # joins topic and field in aligned column names: "/odom::pose.pose.position.z"
_EP = "__episode"
_INTERVAL_SCHEMA = {
    _EP: pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64, "terminal": pl.Boolean,
    "check": pl.String, "reason": pl.String, "episode_id": pl.String,
}


@dataclass(frozen=True)
class Lineage:
    """Where the rows came from, stamped on every row and quarantine record."""

    source: str  # the source mapping's name
    source_file: str  # path relative to the landing batch
    source_sha256: str
    robot_id: str


def _col(topic: str, path: str) -> str:
    return f"{topic}{SEP}{path}"


def _seen(topic: str) -> str:
    return f"{topic}{SEP}__t"


def _rel_s(t_ns: int | None, t0_ns: int) -> str:
    return "?" if t_ns is None else f"{(t_ns - t0_ns) / 1e9:.2f} s"


def _rel(expr: pl.Expr, t0_ns: int) -> pl.Expr:
    return ((expr - t0_ns) / 1e9).round(2)


def episode_intervals(log: McapLog, mapping: SourceMapping, lineage: Lineage) -> pl.DataFrame:
    """Episodes of a file as [start_ns, end_ns] intervals, with the problems of malformed ones.

    Without a marker topic (or without start/end markers in it) the whole file is
    one episode. Markers are few per file, so they are walked in order here.
    """
    control = log.frames[mapping.control.topic][LOG_TIME]
    t0, t_last = int(control.min()), int(control.max())
    spec = mapping.episode_markers
    markers = log.frames.get(spec.topic) if spec else None
    rows: list[dict] = []
    terminal_times = np.empty(0, dtype=np.int64)
    if spec is not None and markers is not None and markers.height:
        text = pl.col(spec.field)
        if spec.terminal is not None:
            terminal_times = markers.filter(text == spec.terminal)[LOG_TIME].to_numpy()
        bounds = markers.filter(text.is_in([spec.start, spec.end]))
        open_start: int | None = None
        last_end: int | None = None
        for t, kind in bounds.select(LOG_TIME, spec.field).iter_rows():
            if kind == spec.start:
                if open_start is not None:
                    rows.append(dict(start_ns=open_start, end_ns=None, check="unterminated_episode", reason=(
                        f"{spec.start} at {_rel_s(open_start, t0)} is followed by another {spec.start} at "
                        f"{_rel_s(t, t0)} without {spec.end} on {spec.topic}; the recording or the marker publisher dropped it")))
                open_start = t
            elif open_start is None:
                start = min(t0, t) if last_end is None else last_end + 1
                rows.append(dict(start_ns=start, end_ns=t, check="unmatched_episode_end", reason=(
                    f"{spec.end} at {_rel_s(t, t0)} on {spec.topic} has no {spec.start} before it "
                    "(the log probably started mid-episode); its steps were not ingested")))
                last_end = t
            else:
                rows.append(dict(start_ns=open_start, end_ns=t, check=None, reason=None))
                open_start, last_end = None, t
        if open_start is not None:
            rows.append(dict(start_ns=open_start, end_ns=None, check="unterminated_episode", reason=(
                f"{spec.start} at {_rel_s(open_start, t0)} on {spec.topic} has no {spec.end} "
                "(the recording was probably cut short); re-export the complete log")))
    if not rows:
        rows.append(dict(start_ns=t0, end_ns=t_last, check=None, reason=None))
    df = pl.DataFrame(rows, schema={k: v for k, v in _INTERVAL_SCHEMA.items() if k in rows[0]})
    # An open-ended interval lasts until the next episode starts; a fall counts inside it.
    starts = df["start_ns"].to_numpy()
    limit = np.where(df["end_ns"].is_null().to_numpy(), np.append(starts[1:] - 1, t_last), df["end_ns"].fill_null(0).to_numpy())
    terminal_times = np.sort(terminal_times)
    falls = np.searchsorted(terminal_times, limit, side="right") - np.searchsorted(terminal_times, starts, side="left")
    ids = [episode_id(lineage.source_sha256, i) for i in range(df.height)]
    return df.with_columns(
        pl.int_range(df.height, dtype=pl.Int64).alias(_EP),
        pl.Series("terminal", falls > 0),
        pl.Series("episode_id", ids, dtype=pl.String),
    ).select(list(_INTERVAL_SCHEMA))


def _quarantine(rows: pl.DataFrame, lineage: Lineage) -> pl.DataFrame:
    """Quarantine records (stage ingest) from a frame with episode_id, check, reason."""
    return rows.select(
        pl.col("episode_id"),
        pl.lit(lineage.source).alias("source"),
        pl.lit(lineage.source_file).alias("source_file"),
        pl.lit(lineage.source_sha256).alias("source_sha256"),
        pl.lit("ingest").alias("stage"),
        pl.col("check"),
        pl.col("reason"),
    ).cast(QUARANTINE_SCHEMA)


def _piece(p: FieldSpec) -> pl.Expr:
    """One field spec as a float expression (scalar or list) on aligned columns."""
    if p.transform == "yaw_from_quaternion":
        w, x, y, z = (pl.col(_col(p.topic, path)) for path in p.paths)
        return pl.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return pl.concat_list([pl.col(_col(p.topic, path)) for path in p.paths])


def _feature(pieces: tuple[FieldSpec, ...]) -> pl.Expr:
    """A list<float32> feature; null at a step where any of its topics had no message in tolerance."""
    topics = list(dict.fromkeys(p.topic for p in pieces))
    present = pl.all_horizontal([pl.col(_seen(t)).is_not_null() for t in topics])
    values = pl.concat_list([_piece(p) for p in pieces]).cast(pl.List(pl.Float32))
    return pl.when(present).then(values).otherwise(None)


def _align_topics(steps: pl.DataFrame, log: McapLog, mapping: SourceMapping) -> pl.DataFrame:
    """As-of join every feature/reward topic onto the control steps."""
    tolerance_ns = int(round(mapping.control.tolerance_s * 1e9))
    topics = {p.topic for pieces in mapping.features.values() for p in pieces}
    if mapping.reward is not None:
        topics.add(mapping.reward.topic)
    topics.discard(mapping.control.topic)  # the control clock's own columns are already on the steps
    for topic in sorted(topics):
        frame = log.frames[topic]
        right = frame.select(
            pl.col(LOG_TIME).alias("__key"),
            pl.col(LOG_TIME).alias(_seen(topic)),
            *[pl.col(c).alias(_col(topic, c)) for c in frame.columns if c != LOG_TIME],
        )
        steps = steps.join_asof(
            right, left_on=LOG_TIME, right_on="__key", strategy="backward", tolerance=tolerance_ns
        ).drop("__key")
    return steps


def _instruction(steps: pl.DataFrame, log: McapLog, mapping: SourceMapping) -> pl.DataFrame:
    """The instruction in force at each step, never one from before the episode when the episode has its own.

    Latest message at or before the step if it belongs to this episode; else the
    episode's first one; else the latest before the episode began; else null.
    """
    spec = mapping.instruction
    frame = log.frames[spec.topic].select(pl.col(LOG_TIME).alias("__ti"), pl.col(spec.field).alias("__text"))
    before = steps.join_asof(frame, left_on=LOG_TIME, right_on="__ti", strategy="backward")
    after = steps.select(LOG_TIME).join_asof(frame, left_on=LOG_TIME, right_on="__ti", strategy="forward")
    end = pl.coalesce(pl.col("end_ns"), pl.col(LOG_TIME).max().over(_EP))
    return before.with_columns(
        after["__ti"].alias("__ti_next"), after["__text"].alias("__text_next")
    ).with_columns(
        pl.when(pl.col("__ti") >= pl.col("start_ns")).then(pl.col("__text"))
        .when(pl.col("__ti_next") <= end).then(pl.col("__text_next"))
        .otherwise(pl.col("__text"))
        .alias("language_instruction")
    ).drop("__ti", "__text", "__ti_next", "__text_next")


def size_problems(log: McapLog, mapping: SourceMapping) -> list[tuple[str, str]]:
    """(check, reason) for array fields whose length differs from the mapping's `size`."""
    problems = []
    specs = {(p.topic, p.field): p.size for pieces in mapping.features.values() for p in pieces if p.size}
    for (topic, path), size in specs.items():
        frame = log.frames.get(topic)
        if frame is None or not frame.height:
            continue
        lengths = frame[path].list.len()
        bad = int((lengths != size).sum())
        if bad:
            seen = sorted(set(lengths.filter(lengths != size).unique().to_list()))
            problems.append(("field_size", (
                f"field {path} of {topic} has {', '.join(map(str, seen))} values in {bad} of {frame.height} "
                f"messages, expected {size}; fix the recording or the size in {mapping.file_hint}")))
    return problems


def build_episodes(log: McapLog, mapping: SourceMapping, lineage: Lineage) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Canonical episode rows and ingest-stage quarantine records for one decoded file.

    The log must contain every required topic with messages (checked by the caller).
    Rows are `POLARS_SCHEMA` columns in order, then the mapping's extra features.
    """
    control_topic = mapping.control.topic
    intervals = episode_intervals(log, mapping, lineage)
    control = log.frames[control_topic]
    t0 = int(control[LOG_TIME].min())
    steps = (
        control.select(
            LOG_TIME,
            pl.col(LOG_TIME).alias(_seen(control_topic)),
            *[pl.col(c).alias(_col(control_topic, c)) for c in control.columns if c != LOG_TIME],
        )
        .join_asof(intervals.select("start_ns", _EP), left_on=LOG_TIME, right_on="start_ns", strategy="backward")
        .drop("start_ns")
        .join(intervals, on=_EP, how="left", maintain_order="left")
        .filter(pl.col(_EP).is_not_null() & (pl.col("end_ns").is_null() | (pl.col(LOG_TIME) <= pl.col("end_ns"))))
    )

    # Problems per episode; an episode with any is quarantined with every reason found.
    per_episode = steps.group_by(_EP).agg(
        pl.len().alias("n"), pl.col(LOG_TIME).min().alias("first"), pl.col(LOG_TIME).max().alias("last")
    )
    info = intervals.join(per_episode, on=_EP, how="left")
    problems = [info.filter(pl.col("check").is_not_null()).select("episode_id", "check", "reason", _EP)]
    until = pl.coalesce(pl.col("end_ns"), pl.col("start_ns").shift(-1) - 1, pl.lit(int(control[LOG_TIME].max())))
    problems.append(info.with_columns(until.alias("until")).filter(pl.col("n").is_null()).select(
        "episode_id", pl.lit("empty_episode").alias("check"),
        pl.format("episode from {} s to {} s into the log has no {} messages; nothing to learn from",
                  _rel(pl.col("start_ns"), t0), _rel(pl.col("until"), t0), pl.lit(control_topic)).alias("reason"),
        _EP,
    ))
    if log.lost_chunks:
        tol = int(round(mapping.control.tolerance_s * 1e9))
        lost = pl.DataFrame(log.lost_chunks, schema={"lost_start": pl.Int64, "lost_end": pl.Int64, "error": pl.String}, orient="row")
        hit = info.filter(pl.col("n").is_not_null()).join(lost, how="cross").filter(
            (pl.col("lost_start") <= pl.col("last")) & (pl.col("lost_end") >= pl.col("first") - tol)
        ).group_by(_EP, "episode_id", "first", maintain_order=True).agg(pl.col("lost_start").min(), pl.col("lost_end").max(), pl.col("error").first())
        problems.append(hit.select(
            "episode_id", pl.lit("lost_chunks").alias("check"),
            pl.format("messages logged between {} s and {} s sit in unreadable MCAP chunks ({}); re-export the log",
                      _rel(pl.col("lost_start"), t0), _rel(pl.col("lost_end"), t0), pl.col("error")).alias("reason"),
            _EP,
        ))

    steps = _align_topics(steps, log, mapping)
    steps = _instruction(steps, log, mapping)
    no_text = steps.filter(pl.col("language_instruction").is_null()).group_by(_EP, "episode_id", maintain_order=True).agg(pl.col(LOG_TIME).max())
    problems.append(no_text.select(
        "episode_id", pl.lit("no_instruction").alias("check"),
        pl.format("no {} message at or before the episode's last step ({} s into the log); the task is unknown",
                  pl.lit(mapping.instruction.topic), _rel(pl.col(LOG_TIME), t0)).alias("reason"),
        _EP,
    ))
    rejected = pl.concat(problems, how="vertical_relaxed").sort(_EP, maintain_order=True)
    steps = steps.join(rejected.select(_EP), on=_EP, how="anti")

    step = pl.int_range(pl.len(), dtype=pl.Int32).over(_EP)
    reward = (
        pl.when(pl.col(_seen(mapping.reward.topic)).is_not_null()).then(pl.col(_col(mapping.reward.topic, mapping.reward.field)))
        if mapping.reward is not None else pl.lit(None)
    )
    steps = steps.sort(_EP, LOG_TIME, maintain_order=True).with_columns(step.alias("step"))
    is_last = pl.col("step") == pl.len().over(_EP) - 1
    columns = {
        "episode_id": pl.col("episode_id"),
        "step": pl.col("step"),
        "timestamp": (pl.col(LOG_TIME) - pl.col(LOG_TIME).min().over(_EP)) / 1e9,
        "observation.state": _feature(mapping.features["observation.state"]),
        "action": _feature(mapping.features["action"]),
        "reward": reward,
        "is_first": pl.col("step") == 0,
        "is_last": is_last,
        "is_terminal": is_last & pl.col("terminal"),
        "language_instruction": pl.col("language_instruction"),
        "robot_id": pl.lit(lineage.robot_id),
        "source": pl.lit(lineage.source),
        "source_file": pl.lit(lineage.source_file),
        "source_sha256": pl.lit(lineage.source_sha256),
    }
    extras = {name: _feature(mapping.features[name]) for name in mapping.extra_features}
    out = steps.select(
        *[expr.cast(POLARS_SCHEMA[name]).alias(name) for name, expr in columns.items()],
        *[expr.alias(name) for name, expr in extras.items()],
    )
    return out, _quarantine(rejected, lineage)
