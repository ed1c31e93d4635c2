"""Episodes as ROS 2 MCAP logs, the way a robot's rosbag2 recorder writes them: shared by every fleet.

A fleet lays out one episode's messages as `Topic`s (times and payload arrays) in an
`EpisodeLog`; site layouts (layout.py) and faults (faults.py) edit that in place; `write_mcap`
encodes it. Header stamps are the true sample times; publish and log times trail them by
transport jitter (`jittered`). Messages are written in log-time order, as a recorder receives them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap_ros2.writer import Writer

from .ros_msgs import (COMPRESSED_IMAGE, FLOAT64_MULTI_ARRAY, IMAGE, JOINT_STATE, ODOMETRY, POSE_STAMPED, STRING,
                       TWIST_STAMPED, msgdef)

NS = 1_000_000_000
POSE_COVARIANCE = list(np.diag([1e-3, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2]).ravel())
TWIST_COVARIANCE = list(np.diag([1e-2, 1e-2, 1e-2, 5e-2, 5e-2, 5e-2]).ravel())


@dataclass
class Topic:
    """One topic's messages as arrays: times in ns and payload rows.

    Payload keys by type: JointState position/velocity/effort (columns in `joint_names` order);
    Odometry position, orientation_wxyz, linear, angular; PoseStamped position, orientation_wxyz;
    TwistStamped linear, angular; Float64MultiArray and String data; CompressedImage data (encoded
    frames, bytes) and format; Image pixels (uint8 arrays, height x width x 3, written as rgb8).
    """

    name: str
    ros_type: str
    stamp: np.ndarray  # int64 ns, the sample time (header stamp where the type has one)
    publish: np.ndarray  # int64 ns
    log: np.ndarray  # int64 ns
    payload: dict[str, np.ndarray] = field(default_factory=dict)
    frame_id: str = ""
    joint_names: list[str] | None = None  # JointState only
    child_frame_id: str = "base_link"  # Odometry only

    def keep(self, mask: np.ndarray) -> None:
        """Drop the messages where `mask` is False."""
        self.stamp, self.publish, self.log = self.stamp[mask], self.publish[mask], self.log[mask]
        self.payload = {k: v[mask] for k, v in self.payload.items()}

    def shift(self, from_ns: int, by_ns: int) -> None:
        """Move every time of the messages stamped at or after `from_ns` forward by `by_ns`."""
        late = self.stamp >= from_ns
        for arr in (self.stamp, self.publish, self.log):
            arr[late] += by_ns

    def __len__(self) -> int:
        return len(self.stamp)


@dataclass
class EpisodeLog:
    """All topics of one episode before they are written; layouts and faults edit this in place.

    The roles name topics by what they carry, so faults and layouts need not know a fleet's names:
    `command` the control topic, `joints` the JointState topic, `states` every sensor stream
    (joints included), `pose` the measured pose (odometry, end effector); the rest (instruction,
    events) are markers.
    """

    topics: dict[str, Topic]
    start_ns: int
    end_ns: int  # true time of the last physics sample
    command: str
    joints: str
    states: tuple[str, ...]
    pose: str | None = None  # the measured pose the skills' progress is read from (sensor noise applies here)
    camera: str | None = None  # the camera topic, when the fleet logs one (camera faults apply here)

    def topic(self, name: str) -> Topic:
        return self.topics[name]

    def rename(self, old: str, new: str) -> None:
        """Record topic `old` under the name `new` (roles follow)."""
        if new in self.topics and new != old:
            raise ValueError(f"cannot rename {old} to {new}: the log already has a topic {new}")
        self.topics[old].name = new
        self.topics = {t.name: t for t in self.topics.values()}  # keeps the order: channels keep theirs
        swap = {old: new}
        self.command, self.joints = swap.get(self.command, self.command), swap.get(self.joints, self.joints)
        self.states = tuple(swap.get(s, s) for s in self.states)
        self.pose = swap.get(self.pose, self.pose) if self.pose else self.pose
        self.camera = swap.get(self.camera, self.camera) if self.camera else self.camera


def jittered(rng: np.random.Generator, stamp: np.ndarray, publish_after: tuple[float, float],
             log_after: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Publish and log times trailing `stamp` by uniform delays given in milliseconds."""
    publish = stamp + (rng.uniform(*publish_after, len(stamp)) * 1e6).astype(np.int64)
    log = publish + (rng.uniform(*log_after, len(stamp)) * 1e6).astype(np.int64)
    return publish, log


def _header(stamp: int, frame_id: str) -> dict:
    return {"stamp": {"sec": stamp // NS, "nanosec": stamp % NS}, "frame_id": frame_id}


def _pose(p: dict[str, np.ndarray], i: int) -> dict:
    x, y, z = p["position"][i].tolist()
    qw, qx, qy, qz = p["orientation_wxyz"][i].tolist()
    return {"position": {"x": x, "y": y, "z": z}, "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}}


def _twist(p: dict[str, np.ndarray], i: int) -> dict:
    vx, vy, vz = p["linear"][i].tolist()
    wx, wy, wz = p["angular"][i].tolist()
    return {"linear": {"x": vx, "y": vy, "z": vz}, "angular": {"x": wx, "y": wy, "z": wz}}


def _message(topic: Topic, i: int) -> dict:
    """The ROS message of row `i` as the dict mcap-ros2-support encodes."""
    p, stamp = topic.payload, int(topic.stamp[i])
    if topic.ros_type == JOINT_STATE:
        return {"header": _header(stamp, topic.frame_id), "name": topic.joint_names,
                "position": p["position"][i].tolist(), "velocity": p["velocity"][i].tolist(),
                "effort": p["effort"][i].tolist() if "effort" in p else []}
    if topic.ros_type == ODOMETRY:
        return {"header": _header(stamp, topic.frame_id), "child_frame_id": topic.child_frame_id,
                "pose": {"pose": _pose(p, i), "covariance": POSE_COVARIANCE},
                "twist": {"twist": _twist(p, i), "covariance": TWIST_COVARIANCE}}
    if topic.ros_type == POSE_STAMPED:
        return {"header": _header(stamp, topic.frame_id), "pose": _pose(p, i)}
    if topic.ros_type == TWIST_STAMPED:
        return {"header": _header(stamp, topic.frame_id), "twist": _twist(p, i)}
    if topic.ros_type == COMPRESSED_IMAGE:
        return {"header": _header(stamp, topic.frame_id), "format": str(p["format"][i]), "data": p["data"][i]}
    if topic.ros_type == IMAGE:
        pixels = p["pixels"][i]
        height, width, channels = pixels.shape
        return {"header": _header(stamp, topic.frame_id), "height": height, "width": width, "encoding": "rgb8",
                "is_bigendian": 0, "step": width * channels, "data": pixels.tobytes()}
    if topic.ros_type == FLOAT64_MULTI_ARRAY:
        row = p["data"][i].tolist()
        return {"layout": {"dim": [{"label": "joints", "size": len(row), "stride": len(row)}], "data_offset": 0},
                "data": row}
    return {"data": str(p["data"][i])}


def write_mcap(log: EpisodeLog, path: Path, metadata: dict[str, dict[str, str]]) -> None:
    """Write every message in log-time order (as a recorder receives them) plus the metadata
    records (name -> {key: value}). Nothing about the operator goes into the file."""
    topics = [t for t in log.topics.values() if len(t)]
    order_topic = np.concatenate([np.full(len(t), k) for k, t in enumerate(topics)])
    order_row = np.concatenate([np.arange(len(t)) for t in topics])
    order = np.argsort(np.concatenate([t.log for t in topics]), kind="stable")
    with open(path, "wb") as fh:
        writer = Writer(fh)
        schemas = {}
        for t in topics:
            if t.ros_type not in schemas:
                schemas[t.ros_type] = writer.register_msgdef(t.ros_type, msgdef(t.ros_type))
        sequence = {t.name: 0 for t in topics}
        for k, i in zip(order_topic[order].tolist(), order_row[order].tolist()):
            t = topics[k]
            writer.write_message(t.name, schemas[t.ros_type], _message(t, i), log_time=int(t.log[i]),
                                 publish_time=int(t.publish[i]), sequence=sequence[t.name])
            sequence[t.name] += 1
        for name, record in metadata.items():
            writer.add_metadata(name, dict(record))
        writer.finish()


def sensor_topic(name: str, ros_type: str, stamp: np.ndarray, payload: dict[str, np.ndarray],
                 rng: np.random.Generator, **kw) -> Topic:
    """A sensor stream sampled at `stamp`: published within 0.3 ms, logged within 1.2 ms more."""
    pub, log = jittered(rng, stamp, (0.0, 0.3), (0.0, 1.2))
    return Topic(name, ros_type, stamp.astype(np.int64), pub, log, payload, **kw)


def command_topic(name: str, ros_type: str, start_ns: int, step_ns: int, data: np.ndarray,
                  rng: np.random.Generator) -> Topic:
    """One command per control step, stamped at its step's state sample: the loop's compute time
    (about 2 ms) delays its publication, so aligning states to commands "as of" the command's
    time finds the state the command saw."""
    stamp = start_ns + np.arange(len(data), dtype=np.int64) * step_ns
    pub, log = jittered(rng, stamp, (1.8, 2.2), (0.0, 0.3))
    return Topic(name, ros_type, stamp, pub, log, {"data": data.copy()})


def marker_topics(instruction_topic: str, events_topic: str, instruction: str, start_ns: int, end_ns: int,
                  fell: bool, rng: np.random.Generator) -> tuple[Topic, Topic]:
    """The instruction (just before the start, then every 1 s) and the episode events
    (episode_start, fall_detected if it fell, episode_end) as std_msgs/String topics."""
    instr_stamp = np.r_[start_ns - 4_000_000, start_ns + np.arange(NS, end_ns - start_ns + 1, NS, dtype=np.int64)]
    pub, log = jittered(rng, instr_stamp, (0.0, 0.5), (0.0, 0.5))
    instr = Topic(instruction_topic, STRING, instr_stamp.astype(np.int64), pub, log,
                  {"data": np.array([instruction] * len(instr_stamp), dtype=object)})
    events = ["episode_start"] + (["fall_detected"] if fell else []) + ["episode_end"]
    ev_stamp = np.array([start_ns - 5_000_000] + ([end_ns + 3_000_000] if fell else []) + [end_ns + 5_000_000],
                        dtype=np.int64)
    pub, log = jittered(rng, ev_stamp, (0.0, 0.2), (0.0, 0.2))
    return instr, Topic(events_topic, STRING, ev_stamp, pub, log, {"data": np.array(events, dtype=object)})
