"""One Ant episode laid out as ROS 2 topics (written by mcap_log.write_mcap).

Topics (see datasets/sources/ant_fleet_ros2.yaml):
  /joint_states  sensor_msgs/msg/JointState      100 Hz  qpos[7:15], qvel[6:14], measured torques
  /odom          nav_msgs/msg/Odometry            50 Hz  base pose (x, y, z, quaternion) and qvel[0:6]
  /cmd_joint     std_msgs/msg/Float64MultiArray   20 Hz  the 8 actions (actuator order) as applied
  /instruction   std_msgs/msg/String              at the start and every 1 s
  /events        std_msgs/msg/String              episode_start, fall_detected, episode_end
  /camera/front/compressed  sensor_msgs/msg/CompressedImage  4 Hz  64x64 JPEG from the model's tracking camera
                 (simulator.camera; left out without a GL backend or with camera=False)
"""
from __future__ import annotations

import numpy as np

from .camera import CameraSpec, add_camera
from .mcap_log import NS, EpisodeLog, command_topic, marker_topics, sensor_topic
from .ros_msgs import FLOAT64_MULTI_ARRAY, JOINT_STATE, ODOMETRY
from .rollout import Episode
from .skills import ACTUATOR_OF_JOINT, JOINT_NAMES, ODOM_EVERY, PHYSICS_DT, SUBSTEPS, make_env

SAMPLE_NS = int(round(PHYSICS_DT * NS))  # 10 ms
GEAR = 150.0  # Ant-v5 motor gear: torque = gear * action
CAMERA = CameraSpec("/camera/front/compressed", camera="track", frame_id="front_camera")  # follows the torso


def _model() -> tuple:
    env = make_env(0).unwrapped
    return env.model, env.data


def build_log(ep: Episode, instruction: str, start_ns: int, rng: np.random.Generator,
              camera_rng: np.random.Generator | None = None) -> EpisodeLog:
    """Lay out every message of `ep` on a timeline starting at `start_ns` (vectorised); with `camera_rng`,
    the camera topic too (its own random stream, so the other topics are the same with or without it)."""
    n_samples = len(ep.qpos)
    sample_ns = start_ns + np.arange(n_samples, dtype=np.int64) * SAMPLE_NS
    end_ns = int(sample_ns[-1])

    # Measured joint torques: the command in force during the physics step that ended at
    # each sample (none before the first step), in joint order.
    step_of_sample = np.clip((np.arange(n_samples) - 1) // SUBSTEPS, 0, ep.n_steps - 1)
    effort = GEAR * ep.actions[step_of_sample][:, ACTUATOR_OF_JOINT]
    effort[0] = 0.0
    joint = sensor_topic("/joint_states", JOINT_STATE, sample_ns, {
        "position": ep.qpos[:, 7:15].copy(), "velocity": ep.qvel[:, 6:14].copy(), "effort": effort},
        rng, joint_names=list(JOINT_NAMES))

    odom_idx = np.arange(0, n_samples, ODOM_EVERY)
    odom = sensor_topic("/odom", ODOMETRY, sample_ns[odom_idx], {
        "position": ep.qpos[odom_idx, 0:3].copy(), "orientation_wxyz": ep.qpos[odom_idx, 3:7].copy(),
        "linear": ep.qvel[odom_idx, 0:3].copy(), "angular": ep.qvel[odom_idx, 3:6].copy()},
        rng, frame_id="odom")

    cmd = command_topic("/cmd_joint", FLOAT64_MULTI_ARRAY, start_ns, SUBSTEPS * SAMPLE_NS, ep.actions, rng)
    instr, ev = marker_topics("/instruction", "/events", instruction, start_ns, end_ns, ep.fell, rng)
    log = EpisodeLog({t.name: t for t in (joint, odom, cmd, instr, ev)}, start_ns, end_ns,
                     command="/cmd_joint", joints="/joint_states", states=("/joint_states", "/odom"), pose="/odom")
    if camera_rng is not None:
        add_camera(log, CAMERA, "ant", _model, ep.qpos, sample_ns, camera_rng)
    return log
