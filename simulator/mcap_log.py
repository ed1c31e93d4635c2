"""One simulated episode as a ROS 2 MCAP log, the way a robot's rosbag2 recorder writes it.

Topics (see datasets/sources/ant_fleet_ros2.yaml):
  /joint_states  sensor_msgs/msg/JointState      100 Hz  qpos[7:15], qvel[6:14], measured torques
  /odom          nav_msgs/msg/Odometry            50 Hz  base pose (x, y, z, quaternion) and qvel[0:6]
  /cmd_joint     std_msgs/msg/Float64MultiArray   20 Hz  the 8 actions (actuator order) as applied
  /instruction   std_msgs/msg/String              at the start and every 1 s
  /events        std_msgs/msg/String              episode_start, fall_detected, episode_end

Header stamps are the true sample times; publish and log times trail them by transport
jitter (under 2 ms). The command of a control step is published about 2 ms after the
state sample it was computed from, as a real control loop does, so aligning states to
commands "as of" the command's time finds the state the command saw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mcap_ros2.writer import Writer

from .ros_msgs import FLOAT64_MULTI_ARRAY, JOINT_STATE, ODOMETRY, STRING, msgdef
from .rollout import Episode
from .skills import ACTUATOR_OF_JOINT, JOINT_NAMES, PHYSICS_DT, SUBSTEPS

NS = 1_000_000_000
SAMPLE_NS = int(round(PHYSICS_DT * NS))  # 10 ms
ODOM_EVERY = 2  # /odom at 50 Hz: every second physics sample
GEAR = 150.0  # Ant-v5 motor gear: torque = gear * action
ODOM_COVARIANCE = list(np.diag([1e-3, 1e-3, 1e-3, 1e-2, 1e-2, 1e-2]).ravel())
TWIST_COVARIANCE = list(np.diag([1e-2, 1e-2, 1e-2, 5e-2, 5e-2, 5e-2]).ravel())


@dataclass
class Topic:
    """One topic's messages as arrays: times in ns and payload rows."""

    name: str
    ros_type: str
    stamp: np.ndarray  # int64 ns, the sample time (header stamp where the type has one)
    publish: np.ndarray  # int64 ns
    log: np.ndarray  # int64 ns
    payload: dict[str, np.ndarray] = field(default_factory=dict)

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
    """All topics of one episode before they are written; faults edit this in place."""

    topics: dict[str, Topic]
    start_ns: int
    end_ns: int  # true time of the last physics sample

    def topic(self, name: str) -> Topic:
        return self.topics[name]


def _jittered(rng: np.random.Generator, stamp: np.ndarray, publish_after: tuple[float, float],
              log_after: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Publish and log times trailing `stamp` by uniform delays given in milliseconds."""
    publish = stamp + (rng.uniform(*publish_after, len(stamp)) * 1e6).astype(np.int64)
    log = publish + (rng.uniform(*log_after, len(stamp)) * 1e6).astype(np.int64)
    return publish, log


def build_log(ep: Episode, instruction: str, start_ns: int, rng: np.random.Generator) -> EpisodeLog:
    """Lay out every message of `ep` on a timeline starting at `start_ns` (vectorised)."""
    n_samples = len(ep.qpos)
    sample_ns = start_ns + np.arange(n_samples, dtype=np.int64) * SAMPLE_NS
    end_ns = int(sample_ns[-1])

    # Measured joint torques: the command in force during the physics step that ended at
    # each sample (none before the first step), in joint order.
    step_of_sample = np.clip((np.arange(n_samples) - 1) // SUBSTEPS, 0, ep.n_steps - 1)
    effort = GEAR * ep.actions[step_of_sample][:, ACTUATOR_OF_JOINT]
    effort[0] = 0.0

    pub, log = _jittered(rng, sample_ns, (0.0, 0.3), (0.0, 1.2))
    joint = Topic("/joint_states", JOINT_STATE, sample_ns.copy(), pub, log, {
        "position": ep.qpos[:, 7:15].copy(), "velocity": ep.qvel[:, 6:14].copy(), "effort": effort})

    odom_idx = np.arange(0, n_samples, ODOM_EVERY)
    pub, log = _jittered(rng, sample_ns[odom_idx], (0.0, 0.3), (0.0, 1.2))
    odom = Topic("/odom", ODOMETRY, sample_ns[odom_idx].copy(), pub, log, {
        "qpos": ep.qpos[odom_idx, :7].copy(), "qvel": ep.qvel[odom_idx, :6].copy()})

    # A command is applied at its control step's state sample plus the loop's compute time.
    cmd_stamp = start_ns + np.arange(ep.n_steps, dtype=np.int64) * SUBSTEPS * SAMPLE_NS
    pub, log = _jittered(rng, cmd_stamp, (1.8, 2.2), (0.0, 0.3))
    cmd = Topic("/cmd_joint", FLOAT64_MULTI_ARRAY, cmd_stamp, pub, log, {"data": ep.actions.copy()})

    instr_stamp = np.r_[start_ns - 4_000_000, start_ns + np.arange(NS, end_ns - start_ns + 1, NS, dtype=np.int64)]
    pub, log = _jittered(rng, instr_stamp, (0.0, 0.5), (0.0, 0.5))
    instr = Topic("/instruction", STRING, instr_stamp.astype(np.int64), pub, log,
                  {"data": np.array([instruction] * len(instr_stamp), dtype=object)})

    events = ["episode_start"] + (["fall_detected"] if ep.fell else []) + ["episode_end"]
    ev_stamp = np.array([start_ns - 5_000_000] + ([end_ns + 3_000_000] if ep.fell else []) + [end_ns + 5_000_000],
                        dtype=np.int64)
    pub, log = _jittered(rng, ev_stamp, (0.0, 0.2), (0.0, 0.2))
    ev = Topic("/events", STRING, ev_stamp, pub, log, {"data": np.array(events, dtype=object)})

    return EpisodeLog({t.name: t for t in (joint, odom, cmd, instr, ev)}, start_ns, end_ns)


def _header(stamp: int, frame_id: str) -> dict:
    return {"stamp": {"sec": stamp // NS, "nanosec": stamp % NS}, "frame_id": frame_id}


def _message(topic: Topic, i: int) -> dict:
    """The ROS message of row `i` as the dict mcap-ros2-support encodes."""
    p, stamp = topic.payload, int(topic.stamp[i])
    if topic.ros_type == JOINT_STATE:
        return {"header": _header(stamp, ""), "name": JOINT_NAMES, "position": p["position"][i].tolist(),
                "velocity": p["velocity"][i].tolist(), "effort": p["effort"][i].tolist()}
    if topic.ros_type == ODOMETRY:
        x, y, z, qw, qx, qy, qz = p["qpos"][i].tolist()
        vx, vy, vz, wx, wy, wz = p["qvel"][i].tolist()
        return {
            "header": _header(stamp, "odom"), "child_frame_id": "base_link",
            "pose": {"pose": {"position": {"x": x, "y": y, "z": z},
                              "orientation": {"x": qx, "y": qy, "z": qz, "w": qw}},
                     "covariance": ODOM_COVARIANCE},
            "twist": {"twist": {"linear": {"x": vx, "y": vy, "z": vz}, "angular": {"x": wx, "y": wy, "z": wz}},
                      "covariance": TWIST_COVARIANCE},
        }
    if topic.ros_type == FLOAT64_MULTI_ARRAY:
        return {"layout": {"dim": [{"label": "joints", "size": 8, "stride": 8}], "data_offset": 0},
                "data": p["data"][i].tolist()}
    return {"data": str(p["data"][i])}


def write_mcap(log: EpisodeLog, path: Path, robot_id: str) -> None:
    """Write every message in log-time order (as a recorder receives them) plus the
    "robot" metadata record. Nothing about the operator goes into the file."""
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
        writer.add_metadata("robot", {"robot_id": robot_id})
        writer.finish()
