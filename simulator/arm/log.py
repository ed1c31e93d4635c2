"""One arm episode laid out as ROS 2 topics (written by simulator.mcap_log.write_mcap).

Topics (see datasets/sources/arm_fleet_ros2.yaml):
  /arm/joint_states  sensor_msgs/msg/JointState       100 Hz  joint0, joint1: position, velocity, measured torque
  /arm/ee_pose       geometry_msgs/msg/PoseStamped     50 Hz  fingertip position (z = 0.01 m), yaw q0 + q1
  /arm/target        geometry_msgs/msg/PoseStamped     10 Hz  the target's position (it does not move)
  /arm/cmd           std_msgs/msg/Float64MultiArray    20 Hz  the 2 torque commands in [-1, 1] as applied
  /arm/instruction   std_msgs/msg/String               at the start and every 1 s
  /arm/events        std_msgs/msg/String               episode_start, episode_end
  /arm/camera/compressed  sensor_msgs/msg/CompressedImage  4 Hz  64x64 JPEG from above the arm's table
                     (simulator.camera; left out without a GL backend or with camera=False)

Poses are in the arm base's frame ("arm_base", the origin of Reacher's world). At an odd control step
the newest /arm/ee_pose sample is the one 10 ms before the command's state sample (50 Hz vs 20 Hz).
"""
from __future__ import annotations

import numpy as np

from ..camera import CameraSpec, add_camera
from ..mcap_log import NS, EpisodeLog, command_topic, marker_topics, sensor_topic
from ..ros_msgs import FLOAT64_MULTI_ARRAY, JOINT_STATE, POSE_STAMPED
from .rollout import Episode
from .skills import EE_EVERY, GEAR, JOINT_NAMES, PHYSICS_DT, SUBSTEPS, TARGET_EVERY, make_env

SAMPLE_NS = int(round(PHYSICS_DT * NS))  # 10 ms
PLANE_Z = 0.01  # height of the arm's plane above the base frame
CAMERA = CameraSpec("/arm/camera/compressed", distance=0.5, frame_id="top_camera")  # looks straight down


def _model() -> tuple:
    env = make_env(0).unwrapped
    return env.model, env.data


def _poses(xy: np.ndarray, yaw: np.ndarray) -> dict[str, np.ndarray]:
    position = np.column_stack([xy, np.full(len(xy), PLANE_Z)])
    half = yaw / 2
    zeros = np.zeros_like(half)
    return {"position": position, "orientation_wxyz": np.column_stack([np.cos(half), zeros, zeros, np.sin(half)])}


def build_log(ep: Episode, instruction: str, start_ns: int, rng: np.random.Generator,
              camera_rng: np.random.Generator | None = None) -> EpisodeLog:
    """Lay out every message of `ep` on a timeline starting at `start_ns` (vectorised); with `camera_rng`,
    the camera topic too (its own random stream, so the other topics are the same with or without it)."""
    n_samples = len(ep.qpos)
    sample_ns = start_ns + np.arange(n_samples, dtype=np.int64) * SAMPLE_NS
    end_ns = int(sample_ns[-1])
    # Measured torques: the command in force during the physics step that ended at each sample.
    step_of_sample = np.clip((np.arange(n_samples) - 1) // SUBSTEPS, 0, ep.n_steps - 1)
    effort = GEAR * ep.actions[step_of_sample]
    effort[0] = 0.0
    joints = sensor_topic("/arm/joint_states", JOINT_STATE, sample_ns, {
        "position": ep.qpos[:, :2].copy(), "velocity": ep.qvel[:, :2].copy(), "effort": effort},
        rng, joint_names=list(JOINT_NAMES))
    ee_idx = np.arange(0, n_samples, EE_EVERY)
    ee = sensor_topic("/arm/ee_pose", POSE_STAMPED, sample_ns[ee_idx],
                      _poses(ep.ee[ee_idx], ep.qpos[ee_idx, 0] + ep.qpos[ee_idx, 1]), rng, frame_id="arm_base")
    tg_idx = np.arange(0, n_samples, TARGET_EVERY)
    target = sensor_topic("/arm/target", POSE_STAMPED, sample_ns[tg_idx],
                          _poses(ep.qpos[tg_idx, 2:4], np.zeros(len(tg_idx))), rng, frame_id="arm_base")
    cmd = command_topic("/arm/cmd", FLOAT64_MULTI_ARRAY, start_ns, SUBSTEPS * SAMPLE_NS, ep.actions, rng)
    instr, ev = marker_topics("/arm/instruction", "/arm/events", instruction, start_ns, end_ns, False, rng)
    log = EpisodeLog({t.name: t for t in (joints, ee, target, cmd, instr, ev)}, start_ns, end_ns,
                     command="/arm/cmd", joints="/arm/joint_states",
                     states=("/arm/joint_states", "/arm/ee_pose", "/arm/target"), pose="/arm/ee_pose")
    if camera_rng is not None:
        add_camera(log, CAMERA, "arm", _model, ep.qpos, sample_ns, camera_rng)
    return log
