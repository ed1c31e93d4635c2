"""The Ant's skills, how their progress is measured, and the shared environment.

The instructions and measures mirror `skills:` in datasets/sources/ant_fleet_ros2.yaml
(tests check that both agree). Progress is signed: metres along the initial heading
for walking, radians of yaw turned for turning (positive = left, counter-clockwise).
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from foundations.geometry import yaw_from_quaternion_np as yaw_from_quaternion

CONTROL_HZ = 20
PHYSICS_DT = 0.01  # Ant-v5's MuJoCo timestep
SUBSTEPS = 5  # physics steps per control step: 20 Hz control, 100 Hz state
EPISODE_STEPS = 200  # control steps: 10 s
ODOM_EVERY = 2  # /odom is logged at 50 Hz: every second physics sample

SKILLS: dict[str, dict[str, Any]] = {
    "walk forward": {"measure": "forward_m", "target": 2.0},
    "turn left": {"measure": "yaw_rad", "target": 3.0},
    "turn right": {"measure": "yaw_rad", "target": -3.0},
}

# Joint names in qpos order (qpos[7:15], qvel[6:14]); the actuators use another order.
JOINT_NAMES = ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]


def check_skill(instruction: str) -> str:
    """Return `instruction` if it names a skill, else raise a ValueError listing the skills."""
    if instruction not in SKILLS:
        raise ValueError(f"unknown skill {instruction!r}; known skills: {sorted(SKILLS)}")
    return instruction


def make_env(seed: int | None = None) -> gym.Env:
    """Ant-v5 stepped at 100 Hz (frame_skip=1), reset with `seed` and ready to step.

    The observation is Ant-v5's 27-dim state (no contact forces, no x/y). Nothing
    truncates it: episode length is the caller's business (5 steps per control step).
    """
    env = gym.make(
        "Ant-v5",
        frame_skip=1,
        include_cfrc_ext_in_observation=False,
        max_episode_steps=-1,  # no TimeLimit wrapper
    )
    env.reset(seed=seed)
    return env


def observe(env: gym.Env) -> np.ndarray:
    """The env's current 27-dim observation: qpos[2:15] then qvel[0:14]."""
    data = env.unwrapped.data
    return np.concatenate([data.qpos[2:], data.qvel]).astype(np.float64)


def sensed(qpos: np.ndarray, qvel: np.ndarray, j: int) -> np.ndarray:
    """The 27-dim observation as the logs show it at physics sample j: joints (100 Hz) from sample j,
    the base (odometry, 50 Hz) from the newest odometry sample, j itself at every even sample."""
    o = j - j % ODOM_EVERY
    return np.concatenate([qpos[o, 2:7], qpos[j, 7:15], qvel[o, 0:6], qvel[j, 6:14]])


# Ant-v5's actuators run hip_4, ankle_4, hip_1, ankle_1, ... while qpos runs hip_1,
# ankle_1, ...: actuator_values = joint_values[JOINT_OF_ACTUATOR].
JOINT_OF_ACTUATOR = np.array([6, 7, 0, 1, 2, 3, 4, 5])
ACTUATOR_OF_JOINT = np.argsort(JOINT_OF_ACTUATOR)


def joint_of_actuator(env: gym.Env) -> np.ndarray:
    """The actuator-to-joint map read from the MuJoCo model (equals JOINT_OF_ACTUATOR)."""
    model = env.unwrapped.model
    return model.actuator_trnid[:, 0] - 1  # joint id 0 is the free root


def poses_from_qpos(qpos: np.ndarray) -> np.ndarray:
    """Base poses [x, y, yaw] of qpos rows (..., 15), yaw unwrapped along the first axis."""
    qpos = np.asarray(qpos, dtype=np.float64)
    yaw = yaw_from_quaternion(qpos[..., 3:7])
    if yaw.ndim:
        yaw = np.unwrap(yaw, axis=0)
    return np.stack([qpos[..., 0], qpos[..., 1], yaw], axis=-1)


def progress(skill: str, start_pose: np.ndarray, end_pose: np.ndarray) -> float:
    """Signed progress of one skill between two base poses (x, y, yaw).

    walk forward: metres along the start heading. turn left/right: yaw change in
    radians, positive = left. The end yaw must be continuous with the start (not
    wrapped to (-pi, pi]) for turns beyond half a revolution; `trajectory_progress`
    unwraps a whole trajectory for you.
    """
    measure = SKILLS[check_skill(skill)]["measure"]
    start = np.asarray(start_pose, dtype=np.float64)
    end = np.asarray(end_pose, dtype=np.float64)
    if measure == "forward_m":
        heading = np.array([np.cos(start[2]), np.sin(start[2])])
        return float((end[:2] - start[:2]) @ heading)
    return float(end[2] - start[2])


def trajectory_progress(skill: str, poses: np.ndarray) -> float:
    """Progress over a (T, 3) trajectory of [x, y, yaw] poses sampled densely enough to unwrap yaw."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 3 or len(poses) == 0:
        raise ValueError(f"poses must have shape (T, 3) with T >= 1, got {poses.shape}")
    yaw = np.unwrap(poses[:, 2])
    return progress(skill, np.r_[poses[0, :2], yaw[0]], np.r_[poses[-1, :2], yaw[-1]])
