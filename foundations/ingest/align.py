"""Split a decoded log into episodes and align its multi-rate topics to the control clock.

One canonical row per control message. Each topic is ordered by its clock (log time, or the
header stamp where the mapping asks for it). Every other topic is joined with polars
`join_asof` (backward, tolerance per stream): a topic with no message within the tolerance
leaves that step's feature null, never filled, so validation can quarantine it with a reason.

Streams start and stop at different times: control steps before every aligned stream has
delivered its first message, or after one has stopped, are trimmed and the trim recorded per
episode (`TRIMS_SCHEMA`). A gap inside the kept steps stays null.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from foundations.geometry import yaw_from_quaternion
from foundations.ingest.mapping import HEADER_STAMP, FieldSpec, SourceMapping
from foundations.ingest.mcap_source import LOG_TIME, McapLog
from foundations.ingest.raw_image import png_column
from foundations.schema import POLARS_SCHEMA, QUARANTINE_SCHEMA, episode_id

TIME = "__time"  # ns on the topic's clock (log time or header stamp); frames are sorted by it
SEP = "::"  # joins topic and field in aligned column names: "/odom::pose.pose.position.z"
_EP = "__episode"
_INTERVAL_SCHEMA = {
    _EP: pl.Int64, "start_ns": pl.Int64, "end_ns": pl.Int64, "terminal": pl.Boolean,
    "check": pl.String, "reason": pl.String, "episode_id": pl.String, "truncated": pl.Boolean,
}

# One row per ingested episode: how many control steps were cut at each end, and which stream made it.
TRIMS_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String,
    "source": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
    "trimmed_start_steps": pl.Int32,
    "trimmed_start_s": pl.Float64,
    "start_stream": pl.String,  # the latest-starting stream; null when nothing was trimmed at the start
    "trimmed_end_steps": pl.Int32,
    "trimmed_end_s": pl.Float64,
    "end_stream": pl.String,  # the earliest-stopping stream; null when nothing was trimmed at the end
    # The file was cut short while recording and this episode's end was lost with it: the episode
    # ends at its last complete control step, is_last without is_terminal (RLDS), and is kept.
    "truncated": pl.Boolean,
    "truncated_reason": pl.String,  # why, and how much of the file was read; null when not truncated
    # Optional streams (mapping `streams: {<topic>: {optional: true}}`) the file lacked: the episode has
    # no values for the features they feed. Empty when every stream was there.
    "absent_streams": pl.List(pl.String),
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
    one episode. Markers are few per file, so they are walked in order here. In a file cut short
    (`log.truncated`) the episode open at the cut is kept as a truncated episode, not quarantined.
    """
    control = log.frames[mapping.control.topic][TIME]
    t0, t_last = int(control.min()), int(control.max())
    spec = mapping.episode_markers
    markers = log.frames.get(spec.topic) if spec else None
    rows: list[dict] = []
    terminal_times = np.empty(0, dtype=np.int64)
    if spec is not None and markers is not None and markers.height:
        text = pl.col(spec.field)
        if spec.terminal is not None:
            terminal_times = markers.filter(text == spec.terminal)[TIME].to_numpy()
        bounds = markers.filter(text.is_in([spec.start, spec.end]))
        open_start: int | None = None
        last_end: int | None = None
        for t, kind in bounds.select(TIME, spec.field).iter_rows():
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
        if open_start is not None and log.truncated is not None:
            rows.append(dict(start_ns=open_start, end_ns=None, check=None, reason=None, truncated=True))
        elif open_start is not None:
            rows.append(dict(start_ns=open_start, end_ns=None, check="unterminated_episode", reason=(
                f"{spec.start} at {_rel_s(open_start, t0)} on {spec.topic} has no {spec.end} "
                "(the recording was probably cut short); re-export the complete log")))
    if not rows:
        rows.append(dict(start_ns=t0, end_ns=t_last, check=None, reason=None, truncated=log.truncated is not None))
    rows = [{"truncated": False} | r for r in rows]
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
        return yaw_from_quaternion(w, x, y, z)
    if p.names is not None:
        return pl.col(_col(p.topic, p.selected))
    return pl.concat_list([pl.col(_col(p.topic, path)) for path in p.paths])


def _feature(pieces: tuple[FieldSpec, ...]) -> pl.Expr:
    """A list<float32> feature; null at a step where any of its topics had no message in tolerance."""
    topics = list(dict.fromkeys(p.topic for p in pieces))
    present = pl.all_horizontal([pl.col(_seen(t)).is_not_null() for t in topics])
    values = pl.concat_list([_piece(p) for p in pieces]).cast(pl.List(pl.Float32))
    return pl.when(present).then(values).otherwise(None)


def _image(p: FieldSpec) -> pl.Expr:
    """A camera feature: the encoded frame in force at the step (binary); null when its topic had none in tolerance."""
    return pl.when(pl.col(_seen(p.topic)).is_not_null()).then(pl.col(_col(p.topic, p.frame_column))).otherwise(None)


def _align_topics(steps: pl.DataFrame, log: McapLog, mapping: SourceMapping) -> pl.DataFrame:
    """As-of join every feature/reward topic onto the control steps, each within its stream's tolerance."""
    for topic in _streams(mapping):
        used = _used_columns(mapping, topic)
        tolerance_ns = int(round(mapping.tolerance_for(topic) * 1e9))
        frame = log.frames[topic].drop(LOG_TIME)
        right = frame.select(
            pl.col(TIME).alias("__key"),
            pl.col(TIME).alias(_seen(topic)),
            *[pl.col(c).alias(_col(topic, c)) for c in frame.columns if c in used],
        )
        steps = steps.join_asof(
            right, left_on=TIME, right_on="__key", strategy="backward", tolerance=tolerance_ns
        ).drop("__key")
    return steps


def _used_columns(mapping: SourceMapping, topic: str) -> set[str]:
    """The decoded columns of `topic` that rows are built from: the rest (name arrays, whole arrays
    already picked by name, header stamps) is not carried through the joins."""
    used = {path for pieces in mapping.features.values() for p in pieces if p.topic == topic
            for path in ([p.selected] if p.names is not None else [p.frame_column] if p.image else p.paths)}
    if mapping.reward is not None and mapping.reward.topic == topic:
        used.add(mapping.reward.field)
    return used


def _instruction(steps: pl.DataFrame, log: McapLog, mapping: SourceMapping) -> pl.DataFrame:
    """The instruction in force at each step, never one from before the episode when the episode has its own.

    Latest message at or before the step if it belongs to this episode; else the
    episode's first one; else the latest before the episode began; else null.
    """
    spec = mapping.instruction
    frame = log.frames[spec.topic].select(pl.col(TIME).alias("__ti"), pl.col(spec.field).alias("__text"))
    before = steps.join_asof(frame, left_on=TIME, right_on="__ti", strategy="backward")
    after = steps.select(TIME).join_asof(frame, left_on=TIME, right_on="__ti", strategy="forward")
    end = pl.coalesce(pl.col("end_ns"), pl.col(TIME).max().over(_EP))
    return before.with_columns(
        after["__ti"].alias("__ti_next"), after["__text"].alias("__text_next")
    ).with_columns(
        pl.when(pl.col("__ti") >= pl.col("start_ns")).then(pl.col("__text"))
        .when(pl.col("__ti_next") <= end).then(pl.col("__text_next"))
        .otherwise(pl.col("__text"))
        .alias("language_instruction")
    ).drop("__ti", "__text", "__ti_next", "__text_next")


def _streams(mapping: SourceMapping) -> list[str]:
    """Topics aligned onto the control steps (the control topic's own columns are already on them)."""
    return [t for t in mapping.aligned_topics if t != mapping.control.topic]


def prepare_log(log: McapLog, mapping: SourceMapping) -> list[tuple[str, str]]:
    """Put each frame on its clock (a `TIME` column, sorted) and pick named array elements.

    Returns file-level (check, reason) problems: array fields of the wrong length, indexes past
    an array's end, element names absent from the file, header stamps left unset. The log must
    contain every required topic with messages (checked by the caller).
    """
    problems: list[tuple[str, str]] = []
    for topic, frame in log.frames.items():
        clock, _ = mapping.clock_for(topic)
        if clock == "header" and HEADER_STAMP[0] in frame.columns:
            sec, nsec = (pl.col(c) for c in HEADER_STAMP)
            unset = frame.select(((sec == 0) & (nsec == 0)).sum()).item() if frame.height else 0
            if unset:
                problems.append(("header_stamp", (
                    f"{unset} of {frame.height} {topic} messages have an unset (zero) header stamp, so the header "
                    f"clock cannot order them; set the stamps when recording, or give {topic} clock: log_time under "
                    f"streams in {mapping.file_hint}")))
            time = sec * 1_000_000_000 + nsec
        else:
            time = pl.col(LOG_TIME)
        frame = frame.with_columns(time.cast(pl.Int64).alias(TIME))
        # A recorder's log time is usually in order already: a sort would copy every column for nothing.
        in_order = frame[TIME].is_sorted()
        log.frames[topic] = frame.with_columns(pl.col(TIME).set_sorted()) if in_order else frame.sort(TIME, maintain_order=True)
    for pieces in mapping.features.values():
        for p in pieces:
            frame = log.frames[p.topic]
            if p.image == "raw":
                pngs, problem = png_column(frame, p.raw_paths, p.field)
                if problem is not None:
                    problems.append(("image_encoding", (
                        f"{p.topic}: {problem}; fix the recording, or map the topic's CompressedImage in {mapping.file_hint}")))
                # The raw pixels are dropped here: only the PNG is aligned (far fewer bytes to join).
                log.frames[p.topic] = frame.drop(p.field, *p.raw_paths.values()).with_columns(pngs.alias(p.frame_column))
            elif p.size is not None:
                problems += _length_problems(frame, p.topic, p.field, pl.lit(p.size), str(p.size), mapping)
            elif p.names is not None:
                names_problems = _names_problems(frame, p, mapping)
                problems += names_problems
                if not names_problems:
                    log.frames[p.topic] = _select_named(frame, p)
            else:
                for path in (q for q in p.paths if "[" in q):
                    missing = int(frame[path].is_null().sum())
                    if missing:
                        problems.append(("field_index", (
                            f"field {path} of {p.topic} indexes past the end of its array in {missing} of "
                            f"{frame.height} messages; fix the recording or the index in {mapping.file_hint}")))
    return list(dict.fromkeys(problems))


def _length_problems(frame: pl.DataFrame, topic: str, path: str, want: pl.Expr, want_text: str,
                     mapping: SourceMapping) -> list[tuple[str, str]]:
    if not frame.height:
        return []
    lengths = frame.select(pl.col(path).list.len().alias("n"), want.alias("want"))
    wrong = lengths.filter(pl.col("n") != pl.col("want"))
    if not wrong.height:
        return []
    seen = ", ".join(map(str, sorted(wrong["n"].unique().to_list())))
    return [("field_size", (
        f"field {path} of {topic} has {seen} values in {wrong.height} of {frame.height} messages, expected "
        f"{want_text}; fix the recording or the size in {mapping.file_hint}"))]


def _names_problems(frame: pl.DataFrame, p: FieldSpec, mapping: SourceMapping) -> list[tuple[str, str]]:
    """Every wanted name in every message's name array, and values as many as names."""
    problems = _length_problems(frame, p.topic, p.field, pl.col(p.names_from).list.len(),
                                f"as many as {p.names_from} has", mapping)
    for names in frame[p.names_from].unique(maintain_order=True).to_list():
        absent = [n for n in p.names or () if n not in (names or [])]
        if absent:
            problems.append(("missing_name", (
                f"{', '.join(absent)} not in {p.names_from} of {p.topic} (it has: {', '.join(names or []) or 'nothing'}); "
                f"fix the recording or the names mapped from {p.topic} in {mapping.file_hint}")))
    return problems


def _select_named(frame: pl.DataFrame, p: FieldSpec) -> pl.DataFrame:
    """Add `p.selected`: the elements of `p.field` named `p.names`, in that order, per message.

    Name arrays repeat across messages, so the positions are worked out once per distinct array.
    """
    layouts = frame.select(pl.col(p.names_from).alias("__names")).unique(maintain_order=True)
    positions = [[names.index(n) for n in p.names or ()] for names in layouts["__names"].to_list()]
    layouts = layouts.with_columns(pl.Series("__pos", positions, dtype=pl.List(pl.Int64)))
    return (
        frame.join(layouts, left_on=p.names_from, right_on="__names", how="left", maintain_order="left")
        .with_columns(pl.col(p.field).list.gather(pl.col("__pos")).alias(p.selected))
        .drop("__pos")
    )


def _stream_gates(log: McapLog, mapping: SourceMapping) -> tuple[int | None, str | None, int | None, str | None]:
    """(start, stream, end, stream): steps before `start` precede the latest stream's first message;
    steps after `end` follow the earliest-stopping stream's last message plus its tolerance."""
    start = end = None
    first_stream = last_stream = None
    for topic in _streams(mapping):
        times = log.frames[topic][TIME]
        first, stop = int(times.min()), int(times.max()) + int(round(mapping.tolerance_for(topic) * 1e9))
        if start is None or first > start:
            start, first_stream = first, topic
        if end is None or stop < end:
            end, last_stream = stop, topic
    return start, first_stream, end, last_stream


def build_episodes(log: McapLog, mapping: SourceMapping, lineage: Lineage) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Canonical episode rows, ingest-stage quarantine records and per-episode trims for one decoded file.

    The log must contain every required topic with messages (checked by the caller) and have
    been through `prepare_log` without problems. Rows are `POLARS_SCHEMA` columns in order, then
    the mapping's extra features; trims are `TRIMS_SCHEMA`, one row per ingested episode.
    """
    if any(TIME not in frame.columns for frame in log.frames.values()):
        raise ValueError("build_episodes needs a log put through prepare_log first")
    control_topic = mapping.control.topic
    intervals = episode_intervals(log, mapping, lineage)
    control = log.frames[control_topic]
    t0 = int(control[TIME].min())
    steps = (
        control.select(
            TIME,
            pl.col(TIME).alias(_seen(control_topic)),
            *[pl.col(c).alias(_col(control_topic, c)) for c in control.columns if c in _used_columns(mapping, control_topic)],
        )
        .join_asof(intervals.select("start_ns", _EP), left_on=TIME, right_on="start_ns", strategy="backward")
        .drop("start_ns")
        .join(intervals, on=_EP, how="left", maintain_order="left")
        .filter(pl.col(_EP).is_not_null() & (pl.col("end_ns").is_null() | (pl.col(TIME) <= pl.col("end_ns"))))
    )

    # Problems per episode; an episode with any is quarantined with every reason found.
    per_episode = steps.group_by(_EP).agg(
        pl.len().alias("n"), pl.col(TIME).min().alias("first"), pl.col(TIME).max().alias("last")
    )
    info = intervals.join(per_episode, on=_EP, how="left")
    problems = [info.filter(pl.col("check").is_not_null()).select("episode_id", "check", "reason", _EP)]
    until = pl.coalesce(pl.col("end_ns"), pl.col("start_ns").shift(-1) - 1, pl.lit(int(control[TIME].max())))
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

    steps, trims = _trim(steps, log, mapping)
    kept = trims.filter(pl.col("kept_first").is_not_null())
    problems.append(trims.filter(pl.col("kept_first").is_null()).join(intervals.select(_EP, "episode_id"), on=_EP).select(
        "episode_id", pl.lit("trimmed_empty").alias("check"),
        pl.format("no control step of the episode ({} s to {} s into the log) has every stream: {} starts at {} s, "
                  "{} stops at {} s; the streams never overlap this episode, check the recording",
                  _rel(pl.col("first"), t0), _rel(pl.col("last"), t0), pl.col("start_stream"), _rel(pl.col("start_gate"), t0),
                  pl.col("end_stream"), _rel(pl.col("end_gate"), t0)).alias("reason"),
        _EP,
    ))

    steps = _align_topics(steps, log, mapping)
    steps = _instruction(steps, log, mapping)
    no_text = steps.filter(pl.col("language_instruction").is_null()).group_by(_EP, "episode_id", maintain_order=True).agg(pl.col(TIME).max())
    problems.append(no_text.select(
        "episode_id", pl.lit("no_instruction").alias("check"),
        pl.format("no {} message at or before the episode's last step ({} s into the log); the task is unknown",
                  pl.lit(mapping.instruction.topic), _rel(pl.col(TIME), t0)).alias("reason"),
        _EP,
    ))
    rejected = pl.concat(problems, how="vertical_relaxed").sort(_EP, maintain_order=True)
    steps = steps.join(rejected.select(_EP), on=_EP, how="anti")
    kept = kept.join(rejected.select(_EP), on=_EP, how="anti").join(intervals.select(_EP, "episode_id", "truncated"), on=_EP).sort(_EP)
    trim_rows = kept.select(
        "episode_id",
        pl.lit(lineage.source).alias("source"),
        pl.lit(lineage.source_file).alias("source_file"),
        pl.lit(lineage.source_sha256).alias("source_sha256"),
        pl.col("early").alias("trimmed_start_steps"),
        ((pl.col("kept_first") - pl.col("first")) / 1e9).alias("trimmed_start_s"),
        pl.when(pl.col("early") > 0).then(pl.col("start_stream")).alias("start_stream"),
        pl.col("late").alias("trimmed_end_steps"),
        ((pl.col("last") - pl.col("kept_last")) / 1e9).alias("trimmed_end_s"),
        pl.when(pl.col("late") > 0).then(pl.col("end_stream")).alias("end_stream"),
        pl.col("truncated"),
        pl.when(pl.col("truncated")).then(pl.lit(log.truncated, dtype=pl.String)).alias("truncated_reason"),
        pl.lit([], dtype=TRIMS_SCHEMA["absent_streams"]).alias("absent_streams"),  # set by the caller, which knows
    ).cast(TRIMS_SCHEMA)

    step = pl.int_range(pl.len(), dtype=pl.Int32).over(_EP)
    reward = (
        pl.when(pl.col(_seen(mapping.reward.topic)).is_not_null()).then(pl.col(_col(mapping.reward.topic, mapping.reward.field)))
        if mapping.reward is not None else pl.lit(None)
    )
    steps = steps.sort(_EP, TIME, maintain_order=True).with_columns(step.alias("step"))
    is_last = pl.col("step") == pl.len().over(_EP) - 1
    columns = {
        "episode_id": pl.col("episode_id"),
        "step": pl.col("step"),
        "timestamp": (pl.col(TIME) - pl.col(TIME).min().over(_EP)) / 1e9,
        "observation.state": _feature(mapping.features["observation.state"]),
        "action": _feature(mapping.features["action"]),
        "reward": reward,
        "is_first": pl.col("step") == 0,
        "is_last": is_last,
        "is_terminal": is_last & pl.col("terminal") & ~pl.col("truncated"),
        "language_instruction": pl.col("language_instruction"),
        "robot_id": pl.lit(lineage.robot_id),
        "source": pl.lit(lineage.source),
        "source_file": pl.lit(lineage.source_file),
        "source_sha256": pl.lit(lineage.source_sha256),
    }
    images = mapping.image_features
    extras = {name: _image(images[name]) if name in images else _feature(mapping.features[name])
              for name in mapping.extra_features}
    out = steps.select(
        *[expr.cast(POLARS_SCHEMA[name]).alias(name) for name, expr in columns.items()],
        *[expr.alias(name) for name, expr in extras.items()],
    )
    return out, _quarantine(rejected, lineage), trim_rows


def _trim(steps: pl.DataFrame, log: McapLog, mapping: SourceMapping) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Drop the steps outside the span every aligned stream covers; per episode, what was dropped.

    The gates are file-level: a stream that starts late only cuts the episodes it starts in.
    """
    start, start_stream, end, end_stream = _stream_gates(log, mapping)
    t = pl.col(TIME)
    early = t < start if start is not None else pl.lit(False)
    late = t > end if end is not None else pl.lit(False)
    steps = steps.with_columns(early.alias("__early"), late.alias("__late"))
    keep = ~pl.col("__early") & ~pl.col("__late")
    trims = steps.group_by(_EP, maintain_order=True).agg(
        t.min().alias("first"), t.max().alias("last"),
        pl.col("__early").sum().alias("early"), pl.col("__late").sum().alias("late"),
        t.filter(keep).min().alias("kept_first"), t.filter(keep).max().alias("kept_last"),
    ).with_columns(
        pl.lit(start_stream, dtype=pl.String).alias("start_stream"), pl.lit(start, dtype=pl.Int64).alias("start_gate"),
        pl.lit(end_stream, dtype=pl.String).alias("end_stream"), pl.lit(end, dtype=pl.Int64).alias("end_gate"),
    )
    return steps.filter(keep).drop("__early", "__late"), trims
