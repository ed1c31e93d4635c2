"""Read the topics a source mapping needs from one ROS 2 MCAP file into polars frames (format `mcap`).

Decoding is per message (CDR); the Python work per message is one C-level
`attrgetter` call (a small getter when a path indexes an array) and one list append.
Columns are built once per topic; the header stamp is read where it is the topic's clock.
A file whose summary is intact but whose chunks are partly corrupt is salvaged
chunk by chunk; the time ranges of lost chunks are reported, never hidden.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import MCAP0_MAGIC
from mcap_ros2.decoder import DecoderFactory

from foundations.ingest.mapping import HEADER_STAMP, SourceMapping

LOG_TIME = "log_time"


class UnreadableLog(Exception):
    """The file cannot be read as MCAP at all (the message says why)."""


class FieldMismatch(Exception):
    """A mapped field is absent from, or of the wrong type in, a topic's messages."""

    def __init__(self, topic: str, message: str):
        super().__init__(message)
        self.topic = topic


@dataclass(frozen=True)
class Column:
    """One column read from a topic: a field path and its kind."""

    path: str
    kind: str  # "float" (a number), "int" (an integer, e.g. a stamp), "list" (numbers), "text", "strings"
    optional: bool = False  # absent from the messages: left out instead of a mismatch (header clock fallback)


_KINDS = {  # kind -> (test of a decoded value, what the mapping expected, polars dtype)
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", pl.Float64),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", pl.Int64),
    "list": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v), "an array of numbers", None),
    "text": (lambda v: isinstance(v, str), "a string", pl.String),
    "strings": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "an array of strings",
                pl.List(pl.String)),
}
_STEP = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")


@dataclass
class McapLog:
    """The needed topics of one log file, one frame per topic sorted by `log_time` (ns)."""

    frames: dict[str, pl.DataFrame]
    schema_names: dict[str, str]  # topic -> ROS 2 message type found in the file
    topics_found: list[str]  # every topic in the file, needed or not
    metadata: dict[str, dict[str, str]]
    messages: int  # messages decoded
    lost_chunks: list[tuple[int, int, str]] = field(default_factory=list)  # (start ns, end ns, error)


def topic_columns(mapping: SourceMapping) -> dict[str, list[Column]]:
    """Which fields to read from each topic the mapping uses (and its header stamp where it is the clock)."""
    cols: dict[str, dict[str, Column]] = {t: {} for t in mapping.topics}

    def add(topic: str, path: str, kind: str, optional: bool = False) -> None:
        cols[topic].setdefault(path, Column(path, kind, optional))

    for topic in mapping.topics:
        clock, strict = mapping.clock_for(topic)
        if clock == "header":
            for path in HEADER_STAMP:
                add(topic, path, "int", optional=not strict)
    for pieces in mapping.features.values():
        for p in pieces:
            if p.is_list:
                add(p.topic, p.field, "list")
                if p.names is not None:
                    add(p.topic, p.names_from, "strings")
            else:
                for path in p.paths:
                    add(p.topic, path, "float")
    if mapping.reward is not None:
        add(mapping.reward.topic, mapping.reward.field, "float")
    add(mapping.instruction.topic, mapping.instruction.field, "text")
    if mapping.episode_markers is not None:
        add(mapping.episode_markers.topic, mapping.episode_markers.field, "text")
    return {t: list(c.values()) for t, c in cols.items()}


def _getter(path: str, safe: bool = True) -> Callable[[Any], Any]:
    """Value at a field path; parts may index arrays (`pose.covariance[0]`). `safe`: None past an array's end."""
    if "[" not in path:
        return attrgetter(path)
    steps = [(name, None if name else int(index)) for name, index in _STEP.findall(path)]

    def get(msg: Any) -> Any:
        try:
            for name, index in steps:
                msg = getattr(msg, name) if name else msg[index]
        except IndexError:
            if safe:
                return None
            raise
        return msg

    return get


def _row_getter(paths: list[str]) -> Callable[[Any], tuple]:
    """One tuple of values per message; a single C-level attrgetter when no path indexes an array."""
    if not any("[" in p for p in paths):
        getter = attrgetter(*paths)
        # attrgetter of one path returns the value itself, of several a tuple.
        return getter if len(paths) > 1 else (lambda m, g=getter: (g(m),))
    getters = [_getter(p) for p in paths]
    return lambda m: tuple(g(m) for g in getters)


class _TopicSink:
    """Collects one tuple of field values per message; columns are built once at the end."""

    def __init__(self, topic: str, columns: list[Column]):
        self.topic = topic
        self.columns = columns
        self.get = _row_getter([c.path for c in columns])
        self.times: list[int] = []
        self.rows: list[tuple] = []
        self.checked = False

    def check(self, decoded: Any, type_name: str) -> None:
        """Fail with a readable message when the first message lacks a field or has the wrong type."""
        absent: list[Column] = []
        for col in self.columns:
            try:
                value = _getter(col.path, safe=False)(decoded)
            except (AttributeError, TypeError):
                if col.optional:
                    absent.append(col)
                    continue
                if col.path in HEADER_STAMP:
                    raise FieldMismatch(self.topic, (
                        f"{self.topic} messages (type {type_name}) have no header stamp to use as their clock; "
                        f"give {self.topic} clock: log_time under streams")) from None
                raise FieldMismatch(self.topic, f"field {col.path} not in {self.topic} messages (type {type_name})") from None
            except IndexError:
                raise FieldMismatch(self.topic, (
                    f"field {col.path} of {self.topic} (type {type_name}) indexes past the end of its array")) from None
            ok, want, _ = _KINDS[col.kind]
            if not ok(value):
                raise FieldMismatch(
                    self.topic, f"field {col.path} of {self.topic} (type {type_name}) is {type(value).__name__}, expected {want}"
                )
        if absent:
            self.columns = [c for c in self.columns if c not in absent]
            self.get = _row_getter([c.path for c in self.columns])
        self.checked = True

    def frame(self) -> pl.DataFrame:
        data: dict[str, pl.Series] = {LOG_TIME: pl.Series(LOG_TIME, self.times, dtype=pl.Int64)}
        values = list(zip(*self.rows)) if self.rows else [[] for _ in self.columns]
        for col, vals in zip(self.columns, values):
            if col.kind == "list":
                data[col.path] = _list_series(col.path, vals)
            else:
                data[col.path] = pl.Series(col.path, vals, dtype=_KINDS[col.kind][2], strict=False)
        return pl.DataFrame(data).sort(LOG_TIME, maintain_order=True)


def _list_series(name: str, rows: Any) -> pl.Series:
    """list<float64> from per-message arrays: one numpy block when all have one length (much faster)."""
    try:
        block = np.asarray(rows, dtype=np.float64)
    except ValueError:  # ragged: some message has another length (reported by size checks)
        block = None
    if block is not None and block.ndim == 2 and block.shape[1] > 0:
        return pl.Series(name, block).cast(pl.List(pl.Float64))
    return pl.Series(name, rows, dtype=pl.List(pl.Float64), strict=False)


def read_mcap(path: Path, mapping: SourceMapping) -> McapLog:
    """Decode the topics `mapping` needs from one MCAP file.

    Raises `UnreadableLog` when the file is not readable MCAP (truncated, corrupt
    summary) and `FieldMismatch` when a mapped field does not fit the messages.
    """
    columns = topic_columns(mapping)
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise UnreadableLog(f"cannot open file: {exc}") from exc
    with stream:
        _check_magic(stream)
        try:
            reader = make_reader(stream, validate_crcs=True, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        except Exception as exc:  # any byte-level failure here means no intact summary
            raise UnreadableLog(f"{type(exc).__name__}: {exc}") from exc
        if summary is not None:
            topics_found = sorted({c.topic for c in summary.channels.values()})
            schema_names = {
                c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values() if c.schema_id in summary.schemas
            }
        else:
            topics_found, schema_names = _scan_channels(stream)
        needed = [t for t in columns if t in topics_found]
        sinks = {t: _TopicSink(t, columns[t]) for t in needed}
        lost: list[tuple[int, int, str]] = []
        try:
            messages = _drain(reader.iter_decoded_messages(topics=needed, log_time_order=False), sinks)
        except FieldMismatch:
            raise
        except Exception as exc:
            if summary is None or not summary.chunk_indexes:
                raise UnreadableLog(f"{type(exc).__name__}: {exc}") from exc
            sinks = {t: _TopicSink(t, columns[t]) for t in needed}
            messages, lost = _salvage(stream, summary, sinks)
    frames = {t: s.frame() for t, s in sinks.items()}
    return McapLog(frames, schema_names, topics_found, metadata, messages, lost)


def _check_magic(stream: io.BufferedReader) -> None:
    """Name the usual damage plainly: not MCAP at all, or cut short before the footer."""
    head = stream.read(len(MCAP0_MAGIC))
    size = stream.seek(0, io.SEEK_END)
    if head != MCAP0_MAGIC:
        raise UnreadableLog(f"not an MCAP file (no MCAP magic in its first bytes, {size} bytes in all)")
    stream.seek(max(size - len(MCAP0_MAGIC), 0), io.SEEK_SET)
    if size < 2 * len(MCAP0_MAGIC) or stream.read(len(MCAP0_MAGIC)) != MCAP0_MAGIC:
        raise UnreadableLog(f"the file ends after {size} bytes without the MCAP footer (cut short while writing)")
    stream.seek(0, io.SEEK_SET)


def _drain(decoded: Iterator[tuple[Schema | None, Channel, Message, Any]], sinks: dict[str, _TopicSink]) -> int:
    n = 0
    for schema, channel, message, msg in decoded:
        sink = sinks[channel.topic]
        if not sink.checked:
            sink.check(msg, schema.name if schema else "unknown")
        sink.times.append(message.log_time)
        sink.rows.append(sink.get(msg))
        n += 1
    return n


def _salvage(stream: io.BufferedReader, summary: Any, sinks: dict[str, _TopicSink]) -> tuple[int, list[tuple[int, int, str]]]:
    """Read chunk by chunk, keeping every chunk that decodes whole and listing the others."""
    factory = DecoderFactory()
    wanted = {cid: c for cid, c in summary.channels.items() if c.topic in sinks}
    lost: list[tuple[int, int, str]] = []
    n = 0
    for index in sorted(summary.chunk_indexes, key=lambda ci: ci.message_start_time):
        if index.message_index_offsets and not wanted.keys() & index.message_index_offsets.keys():
            continue
        try:
            stream.seek(index.chunk_start_offset + 1 + 8, io.SEEK_SET)
            chunk = Chunk.read(ReadDataStream(stream))
            rows: list[tuple[_TopicSink, int, Any, str]] = []
            for record in breakup_chunk(chunk, validate_crc=True):
                if isinstance(record, Message) and record.channel_id in wanted:
                    channel = wanted[record.channel_id]
                    schema = summary.schemas.get(channel.schema_id)
                    decoder = factory.decoder_for(channel.message_encoding, schema)
                    if decoder is None:
                        raise UnreadableLog(f"no ROS 2 decoder for {channel.topic} ({channel.message_encoding})")
                    rows.append((sinks[channel.topic], record.log_time, decoder(record.data), schema.name if schema else "unknown"))
        except Exception as exc:
            lost.append((index.message_start_time, index.message_end_time, f"{type(exc).__name__}: {exc}"))
            continue
        for sink, log_time, msg, type_name in rows:
            if not sink.checked:
                sink.check(msg, type_name)
            sink.times.append(log_time)
            sink.rows.append(sink.get(msg))
        n += len(rows)
    return n, lost


def _scan_channels(stream: io.BufferedReader) -> tuple[list[str], dict[str, str]]:
    """Topics and types of a file written without a summary (one linear pass over records)."""
    stream.seek(0, io.SEEK_SET)
    schemas: dict[int, str] = {}
    types: dict[str, str] = {}
    try:
        for record in StreamReader(stream).records:
            if isinstance(record, Schema):
                schemas[record.id] = record.name
            elif isinstance(record, Channel):
                types[record.topic] = schemas.get(record.schema_id, "unknown")
    except Exception as exc:
        raise UnreadableLog(f"{type(exc).__name__}: {exc}") from exc
    stream.seek(0, io.SEEK_SET)
    return sorted(types), types
