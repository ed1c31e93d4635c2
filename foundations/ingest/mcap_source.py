"""Read the topics a source mapping needs from one ROS 2 MCAP file into polars frames (format `mcap`).

Decoding is per message (CDR); the Python work per message is one C-level
`attrgetter` call (a small getter when a path indexes an array) and one list append.
Columns are built once per topic; the header stamp is read where it is the topic's clock.
A file cut short or damaged is recovered record by record (as `mcap recover` does): what
decodes is kept, the time ranges lost are reported, never hidden, and a cut-short file is
marked truncated.
"""
from __future__ import annotations

import io
import mmap
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.opcode import Opcode
from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import MCAP0_MAGIC
from mcap_ros2.decoder import DecoderFactory

from foundations.ingest.cdr_batch import KINDS as BATCH_KINDS
from foundations.ingest.cdr_batch import MAX_LAYOUTS, decode_rows, message_definitions
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
    kind: str  # "float" (a number), "int" (an integer, e.g. a stamp), "list" (numbers), "text", "strings", "bytes"
    optional: bool = False  # absent from the messages: left out instead of a mismatch (header clock fallback)


_KINDS = {  # kind -> (test of a decoded value, what the mapping expected, polars dtype)
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", pl.Float64),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", pl.Int64),
    "list": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v), "an array of numbers", None),
    "text": (lambda v: isinstance(v, str), "a string", pl.String),
    "strings": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "an array of strings",
                pl.List(pl.String)),
    # uint8[] (an image's data): bytes as decoded, or a numpy uint8 array
    "bytes": (lambda v: isinstance(v, (bytes, bytearray, memoryview)) or getattr(v, "dtype", None) == np.uint8,
              "a byte array (uint8[])", pl.Binary),
}
_STEP = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")
_ROW = "__row"  # a message's place in its topic, in file order


@dataclass
class McapLog:
    """The needed topics of one log file, one frame per topic sorted by `log_time` (ns)."""

    frames: dict[str, pl.DataFrame]
    schema_names: dict[str, str]  # topic -> ROS 2 message type found in the file
    topics_found: list[str]  # every topic in the file, needed or not
    metadata: dict[str, dict[str, str]]
    messages: int  # messages decoded
    lost_chunks: list[tuple[int, int, str]] = field(default_factory=list)  # (start ns, end ns, error)
    truncated: str | None = None  # why the file ends early (cut short while writing); None when whole


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
            if p.image is not None:
                add(p.topic, p.field, "bytes")
                if p.image == "raw":
                    for field, path in p.raw_paths.items():
                        add(p.topic, path, "text" if field == "encoding" else "int")
            elif p.is_list:
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


def field_getter(path: str, safe: bool = True) -> Callable[[Any], Any]:
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
    getters = [field_getter(p) for p in paths]
    return lambda m: tuple(g(m) for g in getters)


def first_message_values(topic: str, columns: list[Column], msg: Any, type_name: str) -> list[tuple[Column, Any]]:
    """(column, value) of each mapped field in a topic's first message, every format alike; an optional
    field it lacks is left out. FieldMismatch, saying what to fix, when a field is absent or indexes past
    the end of its array."""
    found = []
    for col in columns:
        try:
            found.append((col, field_getter(col.path, safe=False)(msg)))
        except (AttributeError, TypeError):
            if col.optional:
                continue
            if col.path in HEADER_STAMP:
                raise FieldMismatch(topic, (
                    f"{topic} messages (type {type_name}) have no header stamp to use as their clock; "
                    f"give {topic} clock: log_time under streams")) from None
            raise FieldMismatch(topic, f"field {col.path} not in {topic} messages (type {type_name})") from None
        except IndexError:
            raise FieldMismatch(topic, (
                f"field {col.path} of {topic} (type {type_name}) indexes past the end of its array")) from None
    return found


class _TopicSink:
    """Collects one tuple of field values per message; columns are built once at the end."""

    def __init__(self, topic: str, columns: list[Column]):
        self.topic = topic
        self.columns = columns
        self.get = _row_getter([c.path for c in columns])
        self.times: list[int] = []
        self.rows: list[tuple] = []
        self.checked = False
        # Chunk reading (`_read_chunks`) numbers the messages in file order: `row_ids` for the
        # per-message rows above, a "__row" column in the `batches` decoded at once.
        self.count = 0
        self.row_ids: list[int] = []
        self.batches: list[pl.DataFrame] = []

    def check(self, decoded: Any, type_name: str) -> None:
        """Fail with a readable message when the first message lacks a field or has the wrong type."""
        found = first_message_values(self.topic, self.columns, decoded, type_name)
        for col, value in found:
            ok, want, _ = _KINDS[col.kind]
            if not ok(value):
                raise FieldMismatch(
                    self.topic, f"field {col.path} of {self.topic} (type {type_name}) is {type(value).__name__}, expected {want}"
                )
        if len(found) < len(self.columns):
            self.columns = [c for c, _ in found]
            self.get = _row_getter([c.path for c in self.columns])
        self.checked = True

    def frame(self) -> pl.DataFrame:
        if not self.batches and not self.row_ids:
            return self._rows_frame().sort(LOG_TIME, maintain_order=True)
        # Decoded in batches: file order is the "__row" number (ties in log time keep it, as above).
        parts = list(self.batches)  # columns: LOG_TIME, the columns, _ROW (as the rows frame below)
        if self.row_ids:
            parts.append(self._rows_frame().with_columns(pl.Series(_ROW, self.row_ids, dtype=pl.Int64)))
        frame = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical", rechunk=False)
        if not (frame[_ROW].is_sorted() and frame[LOG_TIME].is_sorted()):  # one layout, in time order: nothing to move
            frame = frame.sort(LOG_TIME, _ROW)
        return frame.drop(_ROW)

    def _rows_frame(self) -> pl.DataFrame:
        """The messages decoded one by one, in the order they came."""
        data: dict[str, pl.Series] = {LOG_TIME: pl.Series(LOG_TIME, self.times, dtype=pl.Int64)}
        values = list(zip(*self.rows)) if self.rows else [[] for _ in self.columns]
        for col, vals in zip(self.columns, values):
            if col.kind == "list":
                data[col.path] = _list_series(col.path, vals)
            elif col.kind == "bytes":
                data[col.path] = pl.Series(col.path, [None if v is None else bytes(v) for v in vals], dtype=pl.Binary)
            else:
                data[col.path] = pl.Series(col.path, vals, dtype=_KINDS[col.kind][2], strict=False)
        return pl.DataFrame(data)

    def add_batch(self, decode: _ChannelDecoder, data: bytes, buf: np.ndarray, starts: np.ndarray,
                  sizes: np.ndarray, times: np.ndarray, row_ids: np.ndarray) -> None:
        """Messages of one channel from one chunk (CDR at `starts` in `buf`): every layout that fits
        decoded at once (foundations.ingest.cdr_batch), the rest one by one with mcap-ros2-support."""
        paths = [(c.path, c.kind) for c in self.columns]
        left: list[np.ndarray] = []
        # Templates for the whole batch, the most common sizes first; none for a kind cdr_batch does not read.
        tries = MAX_LAYOUTS if all(c.kind in BATCH_KINDS for c in self.columns) else 0
        found, counts = np.unique(sizes, return_counts=True)
        for size in found[np.argsort(-counts, kind="stable")]:
            idx = np.flatnonzero(sizes == size)
            if decode.msgdefs is None or size < 4 or tries == 0:
                left.append(idx)
                continue
            if size <= 4096:  # a gather of small rows; big messages are copied whole, one slice each
                block = np.lib.stride_tricks.sliding_window_view(buf, size)[starts[idx]]
            else:
                block = np.frombuffer(b"".join(data[s:s + size] for s in starts[idx].tolist()), np.uint8).reshape(-1, size)
            done, rest, used = decode_rows(decode.msgdefs, decode.root, block, paths, tries)
            tries -= used
            for rows, series in done:
                picked = idx[rows]
                self.batches.append(pl.DataFrame([
                    pl.Series(LOG_TIME, times[picked], dtype=pl.Int64), *series,
                    pl.Series(_ROW, row_ids[picked], dtype=pl.Int64)]))
            left.append(idx[rest])
        for i in np.concatenate(left).tolist() if left else []:
            start = int(starts[i])
            self.rows.append(self.get(decode.decoder(data[start:start + int(sizes[i])])))
            self.times.append(int(times[i]))
            self.row_ids.append(int(row_ids[i]))


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

    An intact file is read through its index. A file cut short (no footer) or damaged
    (a chunk or the summary fails to decode) is recovered record by record, as `mcap recover`
    does: every chunk that decodes is kept, a damaged chunk keeps the records decoded before the
    damage, and reading stops at a tear; `McapLog.lost_chunks` and `McapLog.truncated` say what
    was lost. Raises `UnreadableLog` when nothing the mapping needs could be read and
    `FieldMismatch` when a mapped field does not fit the messages.
    """
    columns = topic_columns(mapping)
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise UnreadableLog(f"cannot open file: {exc}") from exc
    with stream:
        if not _has_footer(stream):
            return _recover(stream, columns)
        try:
            reader = make_reader(stream, validate_crcs=True, decoder_factories=[DecoderFactory()])
            summary = reader.get_summary()
            metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        except Exception:  # a damaged summary: recover from the data section
            return _recover(stream, columns)
        if summary is not None:
            topics_found = sorted({c.topic for c in summary.channels.values()})
            schema_names = {
                c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values() if c.schema_id in summary.schemas
            }
        else:
            topics_found, schema_names = _scan_channels(stream)
        needed = [t for t in columns if t in topics_found]
        sinks = {t: _TopicSink(t, columns[t]) for t in needed}
        try:
            if summary is not None and summary.chunk_indexes:
                messages = _read_chunks(stream, summary, sinks)
            else:  # no index: mcap's reader walks the file (rare: recorders index their chunks)
                messages = _drain(reader.iter_decoded_messages(topics=needed, log_time_order=False), sinks)
        except FieldMismatch:
            raise
        except Exception:
            return _recover(stream, columns)
    frames = {t: s.frame() for t, s in sinks.items()}
    return McapLog(frames, schema_names, topics_found, metadata, messages)


def _has_footer(stream: io.BufferedReader) -> bool:
    """False for a file cut short (no closing magic); UnreadableLog for a file that is not MCAP at all."""
    head = stream.read(len(MCAP0_MAGIC))
    size = stream.seek(0, io.SEEK_END)
    if head != MCAP0_MAGIC:
        raise UnreadableLog(f"not an MCAP file (no MCAP magic in its first bytes, {size} bytes in all)")
    stream.seek(max(size - len(MCAP0_MAGIC), 0), io.SEEK_SET)
    intact = size >= 2 * len(MCAP0_MAGIC) and stream.read(len(MCAP0_MAGIC)) == MCAP0_MAGIC
    stream.seek(0, io.SEEK_SET)
    return intact


@dataclass
class _ChannelDecoder:
    """How one channel's messages decode: all at once (`msgdefs`, `root`) and one at a time (`decoder`)."""

    decoder: Callable[[bytes], Any]
    type_name: str
    msgdefs: dict[str, Any] | None  # None: this channel is decoded message by message only
    root: str

    @classmethod
    def of(cls, channel: Channel, schema: Schema | None) -> _ChannelDecoder:
        if schema is None:
            raise UnreadableLog(f"no ROS 2 decoder for {channel.topic} ({channel.message_encoding})")
        return _channel_decoder(channel.topic, channel.message_encoding, schema.encoding, schema.name, schema.data)


@lru_cache(maxsize=256)
def _channel_decoder(topic: str, message_encoding: str, schema_encoding: str, name: str, text: bytes) -> _ChannelDecoder:
    """Built once per schema in a process: parsing a definition costs more than decoding a small file."""
    decoder = DecoderFactory().decoder_for(message_encoding, Schema(id=0, name=name, encoding=schema_encoding, data=text))
    if decoder is None:
        raise UnreadableLog(f"no ROS 2 decoder for {topic} ({message_encoding})")
    try:
        msgdefs = message_definitions(name, text.decode())
    except Exception:  # the per-message decoder parsed it, so a schema read another way here stays with it
        msgdefs = None
    return _ChannelDecoder(decoder, name, msgdefs, name)


def _chunk_data(data: mmap.mmap, index: Any, zstd: Any) -> bytes:
    """The records of an indexed chunk, decompressed and checked against its CRC (as mcap's reader does)."""
    start = index.chunk_start_offset
    if data[start] != Opcode.CHUNK:
        raise ValueError(f"no chunk at offset {start}")
    body = data[start + 9:start + 9 + index.chunk_length - 9]
    _, _, size, crc = _CHUNK_HEAD.unpack_from(body)
    pos = _CHUNK_HEAD.size
    (n,) = struct.unpack_from("<I", body, pos)
    compression = body[pos + 4:pos + 4 + n].decode()
    pos += 4 + n
    (length,) = _U64.unpack_from(body, pos)
    packed = body[pos + 8:pos + 8 + length]
    if compression == "zstd":
        raw = zstd.decompress(packed, max_output_size=size)
    elif compression == "lz4":
        import lz4.frame
        raw = lz4.frame.decompress(packed)
    elif compression == "":
        raw = packed
    else:
        raise ValueError(f"unsupported chunk compression {compression!r}")
    if len(raw) != size:
        raise ValueError(f"a chunk decompressed to {len(raw)} of {size} bytes")
    if crc and zlib.crc32(raw) != crc:
        raise ValueError("chunk CRC mismatch")
    return raw


_MESSAGE_HEAD = struct.Struct("<HIQQ")  # channel id, sequence, log time, publish time


def _chunk_messages(raw: bytes, wanted: set[int], known: set[int]) -> dict[int, tuple[list[int], list[int], list[int]]]:
    """(data offsets, data sizes, log times) of the messages of each wanted channel in a chunk, in record order."""
    found: dict[int, tuple[list[int], list[int], list[int]]] = {c: ([], [], []) for c in wanted}
    pos, end, head = 0, len(raw), _MESSAGE_HEAD.size
    unpack, u64 = _MESSAGE_HEAD.unpack_from, _U64.unpack_from
    while pos < end:
        (length,) = u64(raw, pos + 1)
        body = pos + 9
        if body + length > end:
            raise ValueError("a record runs past the end of its chunk")
        if raw[pos] == Opcode.MESSAGE:
            channel, _, log_time, _ = unpack(raw, body)
            if channel in wanted:
                starts, sizes, times = found[channel]
                starts.append(body + head)
                sizes.append(length - head)
                times.append(log_time)
            elif channel not in known:
                raise KeyError(f"a message of channel {channel}, which the summary does not list")
        pos = body + length
    return found


def _indexed_messages(data: mmap.mmap, index: Any, buf: np.ndarray, wanted: set[int]) -> dict[int, tuple] | None:
    """(data offsets, sizes, log times) of the wanted channels' messages in a chunk, from its message
    indexes, all at once; None when the indexes are absent or disagree with the records they point at."""
    found = {}
    window = np.lib.stride_tricks.sliding_window_view(buf, 8) if len(buf) >= 8 else None
    for channel, at in index.message_index_offsets.items():
        if channel not in wanted:
            continue
        if window is None or data[at] != Opcode.MESSAGE_INDEX or struct.unpack_from("<H", data, at + 9)[0] != channel:
            return None
        (length,) = struct.unpack_from("<I", data, at + 11)
        entries = np.frombuffer(data, dtype=[("t", "<u8"), ("o", "<u8")], count=length // 16, offset=at + 15)
        offsets = np.sort(entries["o"].astype(np.int64))
        if len(offsets) and (offsets[0] < 0 or offsets[-1] + 31 > len(buf)):
            return None
        record = window[np.minimum(offsets + 1, len(window) - 1)].view("<u8").ravel().astype(np.int64)
        channels = window[np.minimum(offsets + 9, len(window) - 1)][:, :2].copy().view("<u2").ravel()
        times = window[np.minimum(offsets + 15, len(window) - 1)].view("<u8").ravel().astype(np.int64)
        if not ((buf[offsets] == Opcode.MESSAGE).all() and (channels == channel).all() and (record >= 22).all()
                and (offsets + 9 + record <= len(buf)).all()):
            return None
        found[channel] = (offsets + 9 + _MESSAGE_HEAD.size, record - _MESSAGE_HEAD.size, times)
    return found


def _read_chunks(stream: io.BufferedReader, summary: Any, sinks: dict[str, _TopicSink]) -> int:
    """Read the needed topics of an indexed file chunk by chunk, in file order; the messages read.

    A chunk's messages are found through its message indexes (checked against the records they
    point at, and their counts against the file's statistics), else by walking its records; then
    every channel's messages are decoded together (`_TopicSink.add_batch`). Any damage raises (the
    caller recovers).
    """
    import zstandard

    channels = {cid: ch for cid, ch in summary.channels.items() if ch.topic in sinks}
    decoders: dict[int, _ChannelDecoder] = {}
    zstd = zstandard.ZstdDecompressor()
    messages = 0
    counted: dict[int, int] = dict.fromkeys(channels, 0)
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for index in summary.chunk_indexes:
            if index.message_index_offsets and not index.message_index_offsets.keys() & channels.keys():
                continue  # no needed channel in it (as mcap's reader skips it)
            raw = _chunk_data(data, index, zstd)
            buf = np.frombuffer(raw, np.uint8)
            found = _indexed_messages(data, index, buf, set(channels)) if index.message_index_offsets else None
            if found is None:
                walked = _chunk_messages(raw, set(channels), set(summary.channels))
                found = {c: tuple(np.asarray(v, np.int64) for v in walked[c]) for c in walked}
            found = {c: v for c, v in found.items() if len(v[0])}
            for c, v in found.items():
                counted[c] += len(v[0])
            # Topics in the order of their first message here, so the first mismatch reported is the one met first.
            for topic in dict.fromkeys(channels[c].topic for c in sorted(found, key=lambda c: found[c][0][0])):
                sink = sinks[topic]
                ids = [c for c in found if channels[c].topic == topic]
                for c in ids:
                    if c not in decoders:
                        decoders[c] = _ChannelDecoder.of(channels[c], summary.schemas.get(channels[c].schema_id))
                # File order of the topic's messages across its channels: by offset in the chunk.
                starts = np.concatenate([found[c][0] for c in ids])
                sizes = np.concatenate([found[c][1] for c in ids])
                owner = np.concatenate([np.full(len(found[c][0]), k) for k, c in enumerate(ids)])
                order = np.argsort(starts, kind="stable")
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                if not sink.checked:
                    first = int(order[0])
                    decode = decoders[ids[int(owner[first])]]
                    at = int(starts[first])
                    sink.check(decode.decoder(raw[at:at + int(sizes[first])]), decode.type_name)
                for k, c in enumerate(ids):
                    sink.add_batch(decoders[c], raw, buf, *found[c], sink.count + rank[owner == k])
                sink.count += len(starts)
                messages += len(starts)
    stats = summary.statistics
    if stats is not None and any(stats.channel_message_counts.get(c, n) != n for c, n in counted.items()):
        raise ValueError("the message indexes do not account for every message the statistics count")
    return messages


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


_U64 = struct.Struct("<Q")
_CHUNK_HEAD = struct.Struct("<QQQI")  # message start/end time, uncompressed size, uncompressed crc
_PIECE = 1 << 10  # compressed bytes fed at a time to a decompressor salvaging a damaged chunk


def _records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of each whole record in `data`; stops silently at a cut record."""
    pos = 0
    while pos + 9 <= len(data):
        opcode, (length,) = data[pos], _U64.unpack_from(data, pos + 1)
        if pos + 9 + length > len(data):
            return
        yield opcode, data[pos + 9:pos + 9 + length]
        pos += 9 + length


def _decompress_prefix(compression: str, data: bytes) -> tuple[bytes, str | None]:
    """As much of a chunk's records as decompress: (bytes, error or None when all did).

    Whole first (fast); on failure again in small pieces, which keeps the compressed blocks
    before the damaged or missing one (a zstd block holds up to 128 KiB of records). Neither
    format checksums a block, so two separate damages in one chunk can pass unseen before the
    second; one damage (bit rot, a torn write) cannot.
    """
    if compression == "":
        return data, None
    if compression not in ("zstd", "lz4"):
        return b"", f"unsupported chunk compression {compression!r}"

    def decoder() -> Any:
        if compression == "zstd":
            import zstandard
            return zstandard.ZstdDecompressor().decompressobj()
        import lz4.frame
        return lz4.frame.LZ4FrameDecompressor()

    try:
        whole = decoder()
        out = whole.decompress(data)
        if compression == "lz4" and not whole.eof:
            raise EOFError("lz4 frame ends early")
        return out, None
    except Exception:
        pass
    partial, out = decoder(), bytearray()
    blocks = [0]  # output length after each block (output grows a block at a time)
    for pos in range(0, len(data), _PIECE):
        try:
            out += partial.decompress(data[pos:pos + _PIECE])
        except Exception as exc:
            # Compressed blocks share tables and offsets, so damage can decode silently in one block
            # and fail only in the next: the last block before the failure is not trusted either.
            return bytes(out[:blocks[-2] if len(blocks) > 1 else 0]), f"{type(exc).__name__}: {exc}"
        if len(out) > blocks[-1]:
            blocks.append(len(out))
    return bytes(out), "the compressed records end early"  # cut short, not damaged: every block is sound


@dataclass
class _Chunk:
    """What one chunk record gave: its records, and the error that cut it (None when whole)."""

    start: int
    end: int
    records: list[tuple[int, bytes]]
    error: str | None


def _read_chunk(body: bytes, complete: bool) -> _Chunk:
    """The records of a chunk; a damaged or torn chunk gives those before the damage.

    A chunk whose records decompress whole but fail the CRC cannot say where the damage is,
    so it gives nothing (its bytes are not trusted).
    """
    if len(body) < _CHUNK_HEAD.size + 4:
        return _Chunk(0, 0, [], "the chunk header is cut")
    start, end, size, crc = _CHUNK_HEAD.unpack_from(body)
    pos = _CHUNK_HEAD.size
    (n,) = struct.unpack_from("<I", body, pos)
    compression = body[pos + 4:pos + 4 + n].decode("utf-8", "replace")
    pos += 4 + n
    length = _U64.unpack_from(body, pos)[0] if pos + 8 <= len(body) else 0
    data = body[pos + 8:pos + 8 + length]
    raw, error = _decompress_prefix(compression, data)
    if error is None and not complete:
        error = "the chunk is cut short (the file ends inside it)"
    if error is None and crc and zlib.crc32(raw[:size]) != crc:
        return _Chunk(start, end, [], f"CRC mismatch in a chunk of {size} bytes (the damage cannot be located)")
    if error is None and len(raw) < size:
        error = f"the chunk decompressed to {len(raw)} of {size} bytes"
    return _Chunk(start, end, list(_records(raw)), error)


@dataclass
class _Recovery:
    """State of a linear pass: schemas and channels seen, decoders, and what was lost."""

    columns: dict[str, list[Column]]
    schemas: dict[int, Schema] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    sinks: dict[str, _TopicSink] = field(default_factory=dict)
    decoders: dict[int, Any] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    lost: list[tuple[int, int, str]] = field(default_factory=list)
    messages: int = 0
    last_time: int | None = None  # log time of the last message read
    bounds: tuple[int, int] = (0, 2**63 - 1)  # log times possible here (the chunk's range while in one)

    def take(self, opcode: int, body: bytes) -> None:
        """Add one record (outside or inside a chunk); raises on a record that does not parse."""
        stream = ReadDataStream(io.BytesIO(body))
        if opcode == Opcode.SCHEMA:
            schema = Schema.read(stream)
            self.schemas[schema.id] = schema
        elif opcode == Opcode.CHANNEL:
            channel = Channel.read(stream)
            self.channels[channel.id] = channel
            if channel.topic in self.columns and channel.topic not in self.sinks:
                self.sinks[channel.topic] = _TopicSink(channel.topic, self.columns[channel.topic])
        elif opcode == Opcode.MESSAGE:
            message = Message.read(stream, len(body))
            if not self.bounds[0] <= message.log_time <= self.bounds[1]:
                raise ValueError(f"a message's log time {message.log_time} lies outside its chunk's time range")
            self.last_time = message.log_time if self.last_time is None else max(self.last_time, message.log_time)
            channel = self.channels.get(message.channel_id)
            if channel is None or channel.topic not in self.sinks:
                return
            decoder = self.decoders.get(channel.id)
            schema = self.schemas.get(channel.schema_id)
            if decoder is None:
                decoder = DecoderFactory().decoder_for(channel.message_encoding, schema)
                if decoder is None:
                    raise UnreadableLog(f"no ROS 2 decoder for {channel.topic} ({channel.message_encoding})")
                self.decoders[channel.id] = decoder
            msg = decoder(message.data)
            sink = self.sinks[channel.topic]
            if not sink.checked:
                sink.check(msg, schema.name if schema else "unknown")
            sink.times.append(message.log_time)
            sink.rows.append(sink.get(msg))
            self.messages += 1
        elif opcode == Opcode.METADATA:
            meta = Metadata.read(stream)
            self.metadata[meta.name] = dict(meta.metadata)

    def chunk(self, chunk: _Chunk) -> None:
        """Take a chunk's records in order; the first one that fails ends the chunk."""
        error = chunk.error
        self.bounds = (chunk.start, min(chunk.end, 2**63 - 1))
        for opcode, body in chunk.records:
            try:
                self.take(opcode, body)
            except FieldMismatch:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
        self.bounds = (0, 2**63 - 1)
        if error is not None:
            kept = self.last_time if self.last_time is not None and chunk.start <= self.last_time <= chunk.end else None
            self.lost.append((chunk.start if kept is None else kept + 1, chunk.end, error))


def _recover(stream: io.BufferedReader, columns: dict[str, list[Column]]) -> McapLog:
    """Read a damaged or cut-short file linearly, as `mcap recover` does, keeping every record that decodes.

    A tear (a record cut by the end of the file) ends the pass: `McapLog.truncated` says where, and the
    lost tail of a torn chunk is part of that, not of `lost_chunks` (which are holes before the tear).
    """
    state = _Recovery(columns)
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:  # slices read only what they cover
        size = len(data)
        torn, whole = _linear_pass(data, state)
    if torn is None and not whole:
        torn = f"the file ends after {size} bytes without the MCAP footer (cut short while writing)"
    if state.lost and state.last_time is not None and state.lost[-1][0] > state.last_time:
        # Nothing after the last damage decoded: the log ends there, as if cut short.
        error = state.lost.pop()[2]
        torn = f"no record decodes after damage in the last chunk read ({error})"
    if state.messages == 0:  # nothing to keep: say what the damage was
        if not whole:
            raise UnreadableLog(f"the file ends after {size} bytes without the MCAP footer (cut short while writing)")
        raise UnreadableLog(state.lost[0][2] if state.lost else "no message of a needed topic could be read")
    truncated = None if torn is None else f"{torn}; kept every message logged before it"
    topics = {c.topic: state.schemas[c.schema_id].name if c.schema_id in state.schemas else "unknown"
              for c in state.channels.values()}
    frames = {t: s.frame() for t, s in state.sinks.items()}
    return McapLog(frames, topics, sorted(topics), state.metadata, state.messages, state.lost, truncated)


def _linear_pass(data: mmap.mmap, state: _Recovery) -> tuple[str | None, bool]:
    """Feed every data record after the magic to `state`; returns (where the file tears or None, data end reached)."""
    pos, size = len(MCAP0_MAGIC), len(data)
    while pos < size:
        if pos + 9 > size:
            return f"the file ends after {size} bytes inside a record header (cut short while writing)", False
        opcode, (length,) = data[pos], _U64.unpack_from(data, pos + 1)
        body = data[pos + 9:pos + 9 + length]
        complete = len(body) == length
        if opcode == Opcode.CHUNK:
            lost_before = len(state.lost)
            state.chunk(_read_chunk(body, complete))
            if not complete:
                del state.lost[lost_before:]  # the torn chunk's tail is the truncation, not a hole
                return f"the file ends after {size} bytes inside a chunk (cut short while writing)", False
        elif not complete:
            return f"the file ends after {size} bytes inside a record of {length} bytes (cut short while writing)", False
        elif opcode in (Opcode.FOOTER, Opcode.DATA_END):
            return None, True  # the data section is whole; a cut in the summary after it loses only the index
        else:
            try:
                state.take(opcode, body)
            except FieldMismatch:
                raise
            except Exception as exc:
                state.lost.append((state.last_time or 0, state.last_time or 0, f"{type(exc).__name__}: {exc}"))
        pos += 9 + length
    return None, False


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
