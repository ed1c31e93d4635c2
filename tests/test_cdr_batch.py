"""The batch CDR decoder gives exactly mcap-ros2-support's values, and leaves to it what it does not read.

Each test writes a real MCAP file whose topics change layout mid-stream (a longer frame_id,
another array length, joints in another order, a big-endian message), reads it through the
chunk reader (`_read_chunks`: layouts decoded at once, the rest message by message) and through
mcap's reader with mcap-ros2-support's decoder, message by message (`_drain`, the reference), and
compares the frames cell for cell.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mcap.reader import make_reader
from mcap.writer import IndexType, Writer
from mcap_ros2._dynamic import serialize_dynamic
from mcap_ros2.decoder import DecoderFactory
from polars.testing import assert_frame_equal

from foundations.ingest.cdr_batch import MAX_LAYOUTS, Unfit, decode_rows, layout, message_definitions
from foundations.ingest.mcap_source import Column, _drain, _read_chunks, _TopicSink
from simulator.ros_msgs import msgdef

MIXED = "robocurate_test/msg/Mixed"  # every primitive kind, strings between numbers, fixed and bounded arrays
MIXED_DEF = "\n".join([
    "uint8 mode", "string note", "float32[] gains", "int16[3] offsets", "bool flag", "uint64 count", "float64 value",
    "byte[] blob", "char c", "int8[<=4] small", "string[] tags", "std_msgs/Header header", "float64 last",
    "================================================================================",
    "MSG: std_msgs/Header", "builtin_interfaces/Time stamp", "string frame_id",
    "================================================================================",
    "MSG: builtin_interfaces/Time", "int32 sec", "uint32 nanosec",
])
TYPES = {t: msgdef(t) for t in ("nav_msgs/msg/Odometry", "sensor_msgs/msg/JointState", "std_msgs/msg/Float64MultiArray",
                                "geometry_msgs/msg/PoseStamped", "std_msgs/msg/String")} | {MIXED: MIXED_DEF}
JOINTS = ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]


def _header(i: int, frame: str) -> dict:
    return {"stamp": {"sec": 1_700_000_000 + i // 10, "nanosec": (i % 10) * 100_000_000}, "frame_id": frame}


def _messages(rng: np.random.Generator) -> list[tuple[str, str, dict | bytes]]:
    """(topic, type, message) in log order; a bytes message is written as it is."""
    out: list[tuple[str, str, dict | bytes]] = []
    for i in range(60):
        v = rng.normal(size=16).tolist()
        frame = "odom" if i < 25 else "odom_with_a_longer_name"  # the layout changes mid-topic
        out.append(("/odom", "nav_msgs/msg/Odometry", {
            "header": _header(i, frame), "child_frame_id": "base" if i % 7 else "",
            "pose": {"pose": {"position": dict(zip("xyz", v[:3])), "orientation": dict(zip("wxyz", v[3:7]))},
                     "covariance": v[:16] + [0.0] * 20},
            "twist": {"twist": {"linear": dict(zip("xyz", v[7:10])), "angular": dict(zip("xyz", v[10:13]))},
                      "covariance": [float(i)] * 36}}))
        names = JOINTS if i < 30 else JOINTS[::-1] if i < 45 else JOINTS[:6]  # another order, then fewer joints
        out.append(("/joints", "sensor_msgs/msg/JointState", {
            "header": _header(i, "base"), "name": names, "position": v[:len(names)],
            "velocity": v[8:8 + len(names)], "effort": [] if i % 2 else [1.0] * len(names)}))
        n = 8 if i < 50 else 3
        out.append(("/cmd", "std_msgs/msg/Float64MultiArray", {
            "layout": {"dim": [{"label": "joints" if i < 20 else "j", "size": n, "stride": n}] if (i + 1) % 3 else [],
                       "data_offset": i}, "data": v[:n]}))
        out.append(("/pose", "geometry_msgs/msg/PoseStamped", {
            "header": _header(i, "map"), "pose": {"position": dict(zip("xyz", v[:3])), "orientation": dict(zip("xyzw", v[3:7]))}}))
        out.append(("/mixed", MIXED, {
            "mode": i % 256, "note": "é" * (i % 3), "gains": [float(np.float32(x)) for x in v[:i % 4]],
            "offsets": [i, -i, 7], "flag": bool(i % 2), "count": 2**40 + i, "value": v[0], "blob": bytes([i, 1, 2]),
            "c": -3, "small": [1, -2][: i % 3], "tags": ["a", "bb"][: i % 3], "header": _header(i, "x" * (i % 5)),
            "last": v[1]}))
        if i % 10 == 0:
            out.append(("/text", "std_msgs/msg/String", {"data": f"step {i}" if i < 40 else "ünïcode"}))
    # A big-endian message in the middle of /cmd: the batch decoder leaves it to mcap-ros2-support.
    data = [0.5, -1.25, 3.0]
    big = b"\x00\x00\x00\x00" + struct.pack(">III", 0, 999, len(data)) + b"\x00" * 4 + struct.pack(">3d", *data)
    out.insert(31, ("/cmd", "std_msgs/msg/Float64MultiArray", big))
    return out


def _write(path: Path, messages: list[tuple[str, str, dict | bytes]], chunk_size: int = 4096,
           index_types: IndexType = IndexType.ALL) -> None:
    encoders = {name: serialize_dynamic(name, text)[name] for name, text in TYPES.items()}
    with open(path, "wb") as fh:
        writer = Writer(fh, chunk_size=chunk_size, index_types=index_types)
        writer.start("ros2", "test")
        schemas = {name: writer.register_schema(name, "ros2msg", text.encode()) for name, text in TYPES.items()}
        channels: dict[str, int] = {}
        for i, (topic, type_name, msg) in enumerate(messages):
            if topic not in channels:
                channels[topic] = writer.register_channel(topic, "cdr", schemas[type_name])
            data = msg if isinstance(msg, bytes) else encoders[type_name](msg)
            writer.add_message(channels[topic], 1_000 + i * 1000, data, 1_000 + i * 1000)
        writer.finish()


COLUMNS = {
    "/odom": [Column("header.stamp.sec", "int"), Column("header.stamp.nanosec", "int"), Column("pose.pose.position.z", "float"),
              Column("pose.pose.orientation.w", "float"), Column("pose.covariance[3]", "float"),
              Column("twist.covariance", "list"), Column("child_frame_id", "text")],
    "/joints": [Column("name", "strings"), Column("position", "list"), Column("velocity[7]", "float"),
                Column("name[6]", "text"), Column("effort", "list")],
    "/cmd": [Column("data", "list"), Column("layout.data_offset", "int"), Column("layout.dim[0].label", "text"),
             Column("data[2]", "float")],
    "/pose": [Column("pose.orientation.w", "float"), Column("header.frame_id", "text")],
    "/mixed": [Column("mode", "int"), Column("note", "text"), Column("gains", "list"), Column("offsets", "list"),
               Column("offsets[1]", "float"), Column("value", "float"), Column("c", "int"), Column("small", "list"),
               Column("tags", "strings"), Column("header.stamp.nanosec", "float"), Column("last", "float")],
    "/text": [Column("data", "text")],
}


def _read(path: Path, columns: dict[str, list[Column]], batched: bool) -> tuple[int, dict[str, _TopicSink]]:
    with open(path, "rb") as fh:
        reader = make_reader(fh, validate_crcs=True, decoder_factories=[DecoderFactory()])
        sinks = {t: _TopicSink(t, cols) for t, cols in columns.items()}
        if batched:
            n = _read_chunks(fh, reader.get_summary(), sinks)
        else:
            n = _drain(reader.iter_decoded_messages(topics=list(columns), log_time_order=False), sinks)
    return n, sinks


@pytest.mark.parametrize("chunk_size, index_types", [
    (1 << 20, IndexType.ALL), (2048, IndexType.ALL), (2048, IndexType.CHUNK)])  # CHUNK: no message indexes, records walked
def test_batches_equal_mcap_ros2_values(tmp_path, chunk_size, index_types):
    path = tmp_path / "varied.mcap"
    _write(path, _messages(np.random.default_rng(7)), chunk_size, index_types)
    n_ref, ref = _read(path, COLUMNS, batched=False)
    n, got = _read(path, COLUMNS, batched=True)
    assert n == n_ref == 60 * 5 + 6 + 1
    for topic in COLUMNS:
        assert_frame_equal(got[topic].frame(), ref[topic].frame())
    # Decoded at once, not message by message: the big-endian /cmd message is left over, and /mixed
    # (a new layout every few messages) keeps MAX_LAYOUTS per chunk.
    left = {t: len(s.rows) for t, s in got.items()}
    assert left == {"/odom": 0, "/joints": 0, "/cmd": 1, "/pose": 0, "/mixed": left["/mixed"], "/text": 0}
    assert left["/mixed"] < 60
    assert sum(b.height for b in got["/odom"].batches) == 60
    frame = got["/odom"].frame()
    assert frame["child_frame_id"].to_list()[:8] == [""] + ["base"] * 6 + [""]
    joints = got["/joints"].frame()
    assert joints["name"][0].to_list() == JOINTS and joints["name"][59].to_list() == JOINTS[:6]
    assert joints["velocity[7]"][59] is None  # past the end of a 6-joint array: null, as the per-message getter gives
    cmd = got["/cmd"].frame()
    assert cmd.filter(pl.col("layout.data_offset") == 999)["data"].to_list() == [[0.5, -1.25, 3.0]]


def test_more_layouts_than_tried_fall_back_in_order(tmp_path):
    """A topic whose every message has another array length: MAX_LAYOUTS per chunk at once, the rest one by one."""
    messages = [("/cmd", "std_msgs/msg/Float64MultiArray", {"layout": {"dim": [], "data_offset": 0},
                                                           "data": [float(i)] * (1 + i % 20)}) for i in range(60)]
    path = tmp_path / "ragged.mcap"
    _write(path, messages, chunk_size=1 << 20)
    columns = {"/cmd": [Column("data", "list"), Column("data[0]", "float")]}
    _, ref = _read(path, columns, batched=False)
    _, got = _read(path, columns, batched=True)
    assert_frame_equal(got["/cmd"].frame(), ref["/cmd"].frame())
    assert 0 < len(got["/cmd"].rows) < 60 and len(got["/cmd"].batches) == MAX_LAYOUTS


def test_layout_offsets_and_unfit_fields():
    msgdefs = message_definitions("std_msgs/msg/Float64MultiArray", TYPES["std_msgs/msg/Float64MultiArray"])
    encode = serialize_dynamic("std_msgs/msg/Float64MultiArray", TYPES["std_msgs/msg/Float64MultiArray"])["std_msgs/msg/Float64MultiArray"]
    raw = np.frombuffer(encode({"layout": {"dim": [{"label": "ab", "size": 2, "stride": 2}], "data_offset": 5},
                                "data": [1.0, 2.0]}), np.uint8)
    found = layout(msgdefs, "std_msgs/msg/Float64MultiArray", raw, [("data", "list"), ("layout.dim[0].label", "text")])
    assert found.size == len(raw) and len(found.prefix_columns) == 4 * 3  # dim count, label length, data count
    with pytest.raises(Unfit):  # a byte array is `bytes` to mcap-ros2-support, never a list of numbers
        layout(msgdefs, "std_msgs/msg/Float64MultiArray", raw, [("layout.dim", "list")])
    with pytest.raises(Unfit):
        layout(msgdefs, "std_msgs/msg/Float64MultiArray", raw[:-4], [("data", "list")])  # cut short
    rows = np.stack([raw, raw])
    rows[1, 1] = 0  # big-endian header
    done, left, tried = decode_rows(msgdefs, "std_msgs/msg/Float64MultiArray", rows, [("data", "list")])
    assert [r.tolist() for r, _ in done] == [[0]] and left.tolist() == [1] and tried == 2
    assert done[0][1][0].to_list() == [[1.0, 2.0]]
    assert isinstance(done[0][1][0], pl.Series)


def test_default_workers_every_core_only_for_big_batches(tmp_path, monkeypatch):
    from foundations.ingest import ingest as ingest_module

    small = tmp_path / "small.mcap"
    _write(small, _messages(np.random.default_rng(1))[:20])
    assert ingest_module.default_workers([small]) == 1
    monkeypatch.setattr(ingest_module, "PARALLEL_MIN_BYTES", 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert ingest_module.default_workers([small]) == cores
    assert ingest_module.default_workers([tmp_path / "missing.mcap"]) == 1  # unreadable: ingest_file says why, in-process
