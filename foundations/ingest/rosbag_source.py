"""Read the topics a source mapping needs from a rosbag2 bag folder (format `rosbag2`, sqlite3 or
mcap storage) or a ROS 1 `.bag` file (format `ros1`), with the `rosbags` library.

Topics, types and field paths are the ROS ones, as in MCAP: rosbags names ROS 1 types the ROS 2
way (`sensor_msgs/msg/JointState`) and gives ROS 1 header stamps as `sec`/`nanosec`, so one
mapping reads all three formats. The clock is the recorder's receive time (the bag timestamp:
`log_time`) or the header stamp. A bag whose messages stop decoding part way keeps what was
read before the damage and is marked truncated, as a cut-short MCAP file is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from foundations.ingest.frames import check_kind, topic_frame
from foundations.ingest.mapping import SourceMapping
from foundations.ingest.mcap_source import (
    Column, FieldMismatch, McapLog, UnreadableLog, field_getter, first_message_values, topic_columns,
)

# rosbag2 bags before format version 6 carry no message definitions: read them with these.
_DEFAULT_TYPES = Stores.ROS2_HUMBLE


def read_rosbag2(path: Path, mapping: SourceMapping) -> McapLog:
    """Decode the topics `mapping` needs from a rosbag2 bag folder (or the bag's metadata.yaml)."""
    path = Path(path)
    return _read(path.parent if path.is_file() and path.name == "metadata.yaml" else path, mapping, "rosbag2 bag")


def read_ros1(path: Path, mapping: SourceMapping) -> McapLog:
    """Decode the topics `mapping` needs from a ROS 1 `.bag` file."""
    return _read(Path(path), mapping, "ROS 1 bag")


class _Sink:
    """Field values of one topic's messages, checked on the first message, a column per field."""

    def __init__(self, topic: str, columns: list[Column], msgtype: str):
        self.topic, self.columns, self.msgtype = topic, columns, msgtype
        self.getters = [field_getter(c.path, safe=False) for c in columns]
        self.times: list[int] = []
        self.values: list[list[Any]] = [[] for _ in columns]
        self.checked = False

    def check(self, msg: Any) -> None:
        found = first_message_values(self.topic, self.columns, msg, self.msgtype)
        for col, value in found:
            check_kind(self.topic, col, value, f"type {self.msgtype}")
        kept = {c.path for c, _ in found}
        self.getters = [g for c, g in zip(self.columns, self.getters) if c.path in kept]
        self.columns = [c for c, _ in found]
        self.values = [[] for _ in self.columns]
        self.checked = True

    def add(self, time_ns: int, msg: Any) -> None:
        if not self.checked:
            self.check(msg)
        self.times.append(time_ns)
        for out, get in zip(self.values, self.getters):
            try:
                out.append(get(msg))
            except IndexError:  # an index past this message's array: null, reported at alignment
                out.append(None)


def _read(path: Path, mapping: SourceMapping, what: str) -> McapLog:
    columns = topic_columns(mapping)
    try:
        reader = AnyReader([path], default_typestore=get_typestore(_DEFAULT_TYPES))
        reader.open()
    except Exception as exc:  # rosbags raises several kinds for a damaged bag or metadata
        raise UnreadableLog(f"not a readable {what}: {type(exc).__name__}: {exc}") from exc
    try:
        types = {c.topic: c.msgtype for c in reader.connections}
        metadata = _custom_data(reader)
        wanted = [c for c in reader.connections if c.topic in columns]
        sinks = {t: _Sink(t, columns[t], types[t]) for t in dict.fromkeys(c.topic for c in wanted)}
        messages, truncated = 0, None
        try:
            for connection, time_ns, raw in reader.messages(connections=wanted) if wanted else ():
                sinks[connection.topic].add(time_ns, reader.deserialize(raw, connection.msgtype))
                messages += 1
        except FieldMismatch:
            raise
        except Exception as exc:
            if not messages:
                raise UnreadableLog(f"no message of a needed topic decodes in this {what}: {type(exc).__name__}: {exc}") from exc
            truncated = (f"messages stop decoding after {messages} ({type(exc).__name__}: {exc}); "
                         "kept every message read before it")
    finally:
        reader.close()
    frames = {t: topic_frame(s.times, s.columns, s.values) for t, s in sinks.items()}
    return McapLog(frames, types, sorted(types), metadata, messages, truncated=truncated)


def _custom_data(reader: AnyReader) -> dict[str, dict[str, str]]:
    """rosbag2 `custom_data` keys `<record>.<key>` as metadata records (what MCAP metadata holds)."""
    records: dict[str, dict[str, str]] = {}
    for sub in reader.readers:
        storage = getattr(sub, "storage", None)  # a rosbag2 reader; ROS 1 bags have no custom data
        custom = getattr(getattr(storage, "metadata", None), "custom", None) or {}
        for name, value in custom.items():
            record, _, key = str(name).rpartition(".")
            records.setdefault(record or "custom_data", {})[key] = str(value)
    return records
