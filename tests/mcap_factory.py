"""Small real ROS 2 MCAP logs for tests, written with mcap_ros2.writer.Writer.

The message definitions are the real ROS 2 ones (simulator.ros_msgs, plus PoseStamped here),
concatenated with their dependencies as ROS 2 records them in MCAP schemas. Values encode
their own sample time (the header stamp), so tests can check alignment against an
independent numpy computation; `FleetLog` returns that ground truth. Options reproduce what
real fleets do: other topic names and types, recorder delays (log time after the stamp),
streams that start and stop at different times, joints listed in another order.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap_ros2.writer import Writer
from PIL import Image

from simulator.ros_msgs import SEPARATOR, msgdef

# The real ROS 2 definitions, as the fleet simulator embeds them (one source of truth).
MSGDEFS = {
    name: msgdef(name)
    for name in ("sensor_msgs/msg/JointState", "nav_msgs/msg/Odometry", "std_msgs/msg/Float64MultiArray",
                 "std_msgs/msg/String", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/Image")
}
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
MSGDEFS[POSE_STAMPED] = "\n".join([
    "std_msgs/Header header", "Pose pose",
    SEPARATOR, "MSG: std_msgs/Header", "builtin_interfaces/Time stamp", "string frame_id",
    SEPARATOR, "MSG: builtin_interfaces/Time", "int32 sec", "uint32 nanosec",
    SEPARATOR, "MSG: geometry_msgs/Pose", "Point position", "Quaternion orientation",
    SEPARATOR, "MSG: geometry_msgs/Point", "float64 x", "float64 y", "float64 z",
    SEPARATOR, "MSG: geometry_msgs/Quaternion", "float64 x 0", "float64 y 0", "float64 z 0", "float64 w 1",
]) + "\n"
JOINTS = ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]  # the Ant's
T0 = 1_700_000_000 * 10**9
MS = 10**6


def joint_values(t_ns: int) -> list[float]:
    """Position j of the joint message at time t: t in ms plus j/10 (identifies the message)."""
    base = (t_ns - T0) / MS
    return [base + j / 10 for j in range(8)]


def odom_z(t_ns: int) -> float:
    return (t_ns - T0) / MS


def action_values(t_ns: int) -> list[float]:
    base = (t_ns - T0) / 1e9
    return [math.sin(base + j) for j in range(8)]


CAMERA_TOPICS = {"compressed": "/camera/front/compressed", "raw": "/camera/front/image_raw"}
CAMERA_PERIOD_MS = 250  # 4 Hz, like the simulated fleets' cameras


def camera_pixels(k: int, t_ns: int) -> np.ndarray:
    """Frame k of the test camera: 64x64 RGB, a grey level that changes per frame plus fixed noise (never black)."""
    level = 64 + (k * 37) % 128
    noise = np.random.default_rng(k).integers(-3, 4, size=(64, 64, 3))
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def encode_frame(pixels: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def header(t_ns: int) -> dict:
    return {"stamp": {"sec": t_ns // 10**9, "nanosec": t_ns % 10**9}, "frame_id": "odom"}


@dataclass
class Episode:
    """One episode of the synthetic log."""

    duration_s: float = 1.0  # control steps at 20 Hz from its start, end marker at the last one
    instruction: str | None = "walk forward"  # None: no instruction message in this episode
    fall_at_s: float | None = None  # a fall_detected marker this long after the start
    end_marker: bool = True


@dataclass
class FleetLog:
    """What was written: topic -> sample times (header stamps, ns) and log times, plus per-episode control times."""

    path: Path
    times: dict[str, list[int]] = field(default_factory=dict)
    log_times: dict[str, list[int]] = field(default_factory=dict)
    episode_steps: list[list[int]] = field(default_factory=list)
    frames: list[bytes] = field(default_factory=list)  # camera payloads (JPEG bytes or raw pixels), in time order


def write_fleet_log(
    path: Path,
    episodes: list[Episode] | None = None,
    *,
    markers: bool = True,
    robot_id: str | None = "ant-03",
    gap_s: float = 0.5,
    joint_gap: tuple[float, float] | None = None,  # no /joint_states in [a, b) s since the first step
    nan_joint_at: float | None = None,  # one /joint_states message near this time carries NaN
    rename: dict[str, str] | None = None,  # write a topic under another name (recording faults)
    drop: tuple[str, ...] = (),
    instructions: bool = True,
    joint_size: int = 8,
    events: list[tuple[float, str]] | None = None,  # explicit /events (s since the first step, text) instead of markers
    chunk_size: int = 1024 * 1024,
    log_lag_ms: dict[str, float] | None = None,  # topic -> log time minus header stamp (recorder delay)
    starts_s: dict[str, float] | None = None,  # topic -> no message sampled before this (s since the first step)
    stops_s: dict[str, float] | None = None,  # topic -> no message sampled at or after this
    joint_order: list[int] | None = None,  # JointState lists the joints (names and values) in this order
    pose_topic: str | None = None,  # also write the odom pose as geometry_msgs/PoseStamped under this name
    pose_hz: int = 50,  # ... at this rate (a divisor of 50)
    unset_stamps: tuple[str, ...] = (),  # topics whose publisher leaves header.stamp at zero
    camera: str | None = "compressed",  # "compressed" (JPEG CompressedImage), "raw" (rgb8 Image) or None
    pixels: Callable[[int, int], np.ndarray] = camera_pixels,  # frame k at time t (ns) -> HxWx3 uint8
) -> FleetLog:
    """Write a fleet-like log: 100 Hz joints (3 ms phase), 50 Hz odom (5 ms phase), 20 Hz commands,
    a 4 Hz camera (7 ms phase; `camera`, its frames from `pixels`, logged in `FleetLog.frames`).

    Topic options are keyed by the original topic names (before `rename`).
    """
    episodes = episodes if episodes is not None else [Episode()]
    rename = rename or {}
    lag = {t: int(round(ms * MS)) for t, ms in (log_lag_ms or {}).items()}
    starts = {t: T0 + int(round(v * 1e9)) for t, v in (starts_s or {}).items()}
    stops = {t: T0 + int(round(v * 1e9)) for t, v in (stops_s or {}).items()}
    out = FleetLog(Path(path))
    ep_starts, t = [], T0
    for ep in episodes:
        ep_starts.append(t)
        t += int(round(ep.duration_s * 1e9)) + int(gap_s * 1e9)
    t_end = t
    with open(path, "wb") as fh:
        writer = Writer(fh, chunk_size=chunk_size)
        schemas = {name: writer.register_msgdef(name, text) for name, text in MSGDEFS.items()}
        messages: list[tuple[int, str, str, dict]] = []

        def add(t_ns: int, topic: str, type_name: str, msg: dict) -> None:
            if topic in drop or t_ns < starts.get(topic, t_ns) or t_ns >= stops.get(topic, t_ns + 1):
                return
            log_ns = t_ns + lag.get(topic, 0)
            if topic in unset_stamps:
                msg = msg | {"header": header(0)}
            topic = rename.get(topic, topic)
            messages.append((log_ns, topic, type_name, msg))
            out.times.setdefault(topic, []).append(t_ns)
            out.log_times.setdefault(topic, []).append(log_ns)

        nan_done = False
        for t_ns in range(T0 - 20 * MS + 3 * MS, t_end, 10 * MS):
            rel = (t_ns - T0) / 1e9
            if joint_gap and joint_gap[0] <= rel < joint_gap[1]:
                continue
            pos = joint_values(t_ns)[:joint_size]
            if nan_joint_at is not None and not nan_done and rel >= nan_joint_at:
                pos[2] = float("nan")
                nan_done = True
            vel = [-p for p in pos]
            order = joint_order or list(range(joint_size))
            add(t_ns, "/joint_states", "sensor_msgs/msg/JointState",
                {"header": header(t_ns), "name": [JOINTS[i] for i in order], "position": [pos[i] for i in order],
                 "velocity": [vel[i] for i in order], "effort": [0.0] * joint_size})
        for t_ns in range(T0 - 20 * MS + 5 * MS, t_end, 20 * MS):
            z = odom_z(t_ns)
            yaw = (t_ns - T0) / 1e9 * 0.1
            pose = {"position": {"x": z * 1e-3, "y": -z * 1e-3, "z": z},
                    "orientation": {"w": math.cos(yaw / 2), "x": 0.0, "y": 0.0, "z": math.sin(yaw / 2)}}
            if pose_topic is not None and (t_ns - T0 + 15 * MS) % (10**9 // pose_hz) == 0:
                add(t_ns, pose_topic, POSE_STAMPED, {"header": header(t_ns), "pose": pose})
            add(t_ns, "/odom", "nav_msgs/msg/Odometry", {
                "header": header(t_ns), "child_frame_id": "base",
                "pose": {"pose": pose, "covariance": [z + k for k in range(36)]},  # covariance[k] = z + k
                "twist": {"twist": {"linear": {"x": 1.0, "y": 2.0, "z": 3.0}, "angular": {"x": 4.0, "y": 5.0, "z": 6.0}},
                          "covariance": [0.0] * 36},
            })
        for k, t_ns in enumerate(range(T0 - CAMERA_PERIOD_MS * MS + 7 * MS, t_end, CAMERA_PERIOD_MS * MS)):
            if camera is None:
                break
            img = pixels(k, t_ns)
            if camera == "raw":
                h, w, c = img.shape
                msg = {"header": header(t_ns), "height": h, "width": w, "encoding": "rgb8", "is_bigendian": 0,
                       "step": w * c, "data": img.tobytes()}
                add(t_ns, CAMERA_TOPICS["raw"], "sensor_msgs/msg/Image", msg)
            else:
                msg = {"header": header(t_ns), "format": "jpeg", "data": encode_frame(img)}
                add(t_ns, CAMERA_TOPICS["compressed"], "sensor_msgs/msg/CompressedImage", msg)
            out.frames.append(msg["data"])
        for ep, start in zip(episodes, ep_starts):
            n_steps = int(round(ep.duration_s * 20))
            steps = [start + i * 50 * MS for i in range(n_steps)]
            out.episode_steps.append(steps)
            for s in steps:
                add(s, "/cmd_joint", "std_msgs/msg/Float64MultiArray",
                    {"layout": {"dim": [], "data_offset": 0}, "data": action_values(s)})
            if instructions and ep.instruction is not None:
                for s in range(start, start + int(ep.duration_s * 1e9), 10**9):
                    add(s, "/instruction", "std_msgs/msg/String", {"data": ep.instruction})
            if markers:
                add(start, "/events", "std_msgs/msg/String", {"data": "episode_start"})
                if ep.fall_at_s is not None:
                    add(start + int(ep.fall_at_s * 1e9), "/events", "std_msgs/msg/String", {"data": "fall_detected"})
                if ep.end_marker and steps:
                    add(steps[-1], "/events", "std_msgs/msg/String", {"data": "episode_end"})
        for rel, text in events or []:
            add(T0 + int(round(rel * 1e9)), "/events", "std_msgs/msg/String", {"data": text})
        messages.sort(key=lambda m: m[0])  # stable: same-time messages keep the order they were added
        for t_ns, topic, type_name, msg in messages:
            writer.write_message(topic, schemas[type_name], msg, log_time=t_ns, publish_time=t_ns)
        if robot_id is not None:
            writer.add_metadata("robot", {"robot_id": robot_id})
        writer.finish()
    for times in (out.times, out.log_times):
        for topic in times:
            times[topic] = sorted(times[topic])
    return out


def latest_at_or_before(times: list[int], t_ns: np.ndarray, tolerance_ns: int) -> np.ndarray:
    """Index of the latest message at or before each time within tolerance, -1 where none."""
    arr = np.asarray(times, dtype=np.int64)
    idx = np.searchsorted(arr, t_ns, side="right") - 1
    ok = (idx >= 0) & (t_ns - arr[np.clip(idx, 0, None)] <= tolerance_ns)
    return np.where(ok, idx, -1)


def strip_summary(src: Path, dst: Path) -> None:
    """Re-write an MCAP without summary or indexes (as some recorders stream it), same messages."""
    from mcap.reader import make_reader
    from mcap.writer import IndexType
    from mcap.writer import Writer as McapWriter

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        reader = make_reader(fin)
        writer = McapWriter(fout, index_types=IndexType.NONE, repeat_channels=False, repeat_schemas=False,
                            use_statistics=False, use_summary_offsets=False)
        writer.start(profile="ros2", library="robocurate-tests")
        schema_ids: dict[int, int] = {}
        channel_ids: dict[int, int] = {}
        for schema, channel, message in reader.iter_messages():
            if schema.id not in schema_ids:
                schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
            if channel.id not in channel_ids:
                channel_ids[channel.id] = writer.register_channel(channel.topic, channel.message_encoding, schema_ids[schema.id])
            writer.add_message(channel_ids[channel.id], message.log_time, message.data, message.publish_time)
        for meta in reader.iter_metadata():
            writer.add_metadata(meta.name, meta.metadata)
        writer.finish()


def rewrite_log(src: Path, dst: Path, *, schema_text: dict[str, str] | None = None,
                topics: dict[str, str] | None = None, chunk_size: int = 1024 * 1024) -> None:
    """Re-write an MCAP with the same messages but other schema texts (type name -> text) or topic
    names (old -> new): a recorder that embedded a wrong definition, or swapped two topics."""
    from mcap.reader import make_reader
    from mcap.writer import Writer as McapWriter

    schema_text, topics = schema_text or {}, topics or {}
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        reader = make_reader(fin)
        writer = McapWriter(fout, chunk_size=chunk_size)
        writer.start(profile="ros2", library="robocurate-tests")
        schema_ids: dict[int, int] = {}
        channel_ids: dict[int, int] = {}
        for schema, channel, message in reader.iter_messages():
            if schema.id not in schema_ids:
                text = schema_text.get(schema.name)
                data = schema.data if text is None else text.encode()
                schema_ids[schema.id] = writer.register_schema(schema.name, schema.encoding, data)
            if channel.id not in channel_ids:
                channel_ids[channel.id] = writer.register_channel(
                    topics.get(channel.topic, channel.topic), channel.message_encoding, schema_ids[schema.id])
            writer.add_message(channel_ids[channel.id], message.log_time, message.data, message.publish_time)
        for meta in reader.iter_metadata():
            writer.add_metadata(meta.name, meta.metadata)
        writer.finish()
