"""The arm's skills, how their progress is measured, its state layout and the shared environment.

The arm is Gymnasium's Reacher-v5: a planar two-link arm (links 0.1 m and 0.11 m to the fingertip)
on a base at the frame origin, with a target placed at random (within 0.2 m of the base) by the
env's reset seed. Instructions and measures mirror `skills:` in datasets/robots/arm.yaml (tests check
that both agree):

  reach_fraction  share of the first sample's fingertip-to-target distance closed: 1 - d_T / d_0
                  (1 = reached, negative = moved away)
  bearing_rad     bearing of the fingertip around the base, atan2(ee_y, ee_x), turned since the first
                  sample, unwrapped, counter-clockwise (left) positive
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

CONTROL_HZ = 20
PHYSICS_DT = 0.01  # Reacher-v5's MuJoCo timestep
SUBSTEPS = 5  # physics steps per control step: 20 Hz control, 100 Hz state
EPISODE_STEPS = 100  # control steps: 5 s
# Logged rates as physics-sample strides: joints every sample (100 Hz), the fingertip pose every
# second (50 Hz), the target every tenth (10 Hz). A policy sees the newest sample of each (`sensed`).
EE_EVERY, TARGET_EVERY = 2, 10

SKILLS: dict[str, dict[str, Any]] = {
    "reach the target": {"measure": "reach_fraction", "target": 0.8},
    "sweep left": {"measure": "bearing_rad", "target": 1.5},
    "sweep right": {"measure": "bearing_rad", "target": -1.5},
}

JOINT_NAMES = ["joint0", "joint1"]  # shoulder (unlimited), elbow (+-3 rad)
LINKS = (0.1, 0.11)  # base to elbow, elbow to fingertip (m)
GEAR = 200.0  # Reacher-v5 motor gear: torque = gear * action
# What a policy sees, and what the arm's source mapping builds as observation.state.
STATE_LAYOUT = ("q0", "q1", "qd0", "qd1", "ee_x", "ee_y", "target_x", "target_y")


def check_skill(instruction: str) -> str:
    """Return `instruction` if it names a skill, else raise a ValueError listing the skills."""
    if instruction not in SKILLS:
        raise ValueError(f"unknown skill {instruction!r}; known skills: {sorted(SKILLS)}")
    return instruction


def make_env(seed: int | None = None) -> gym.Env:
    """Reacher-v5 stepped at 100 Hz (frame_skip=1), reset with `seed` (which places the target)."""
    env = gym.make("Reacher-v5", frame_skip=1, max_episode_steps=-1)  # no TimeLimit wrapper
    env.reset(seed=seed)
    return env


def fingertip(q: np.ndarray) -> np.ndarray:
    """Fingertip (end-effector) x, y of joint angles q (..., 2): forward kinematics.

    Computed from the angles rather than read from MuJoCo's body positions, which after a
    physics step still describe the state before it."""
    q = np.asarray(q, dtype=np.float64)
    a, b = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([LINKS[0] * np.cos(a) + LINKS[1] * np.cos(b), LINKS[0] * np.sin(a) + LINKS[1] * np.sin(b)], -1)


def states(qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
    """STATE_LAYOUT rows of Reacher qpos (..., 4: q0, q1, target x, y) and qvel (..., 4)."""
    qpos, qvel = np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64)
    return np.concatenate([qpos[..., :2], qvel[..., :2], fingertip(qpos[..., :2]), qpos[..., 2:4]], axis=-1)


def observe(env: gym.Env) -> np.ndarray:
    """The env's current state in STATE_LAYOUT (8 floats), exact."""
    data = env.unwrapped.data
    return states(data.qpos, data.qvel)


def sensed(qpos: np.ndarray, qvel: np.ndarray, j: int) -> np.ndarray:
    """The state (STATE_LAYOUT) as the logs show it at physics sample j: joints from sample j, the
    fingertip and target from their streams' newest samples (exact at even samples, 10 ms old at odd
    ones for the fingertip). This is what the arm's mapping builds as observation.state."""
    e, t = j - j % EE_EVERY, j - j % TARGET_EVERY
    return np.concatenate([qpos[j, :2], qvel[j, :2], fingertip(qpos[e, :2]), qpos[t, 2:4]])


def reach_fraction(ee: np.ndarray, target: np.ndarray) -> float:
    """1 - |ee_T - target| / |ee_0 - target| over a (T, 2) fingertip trajectory and a target (2,) or (T, 2)."""
    dist = np.linalg.norm(np.asarray(ee, dtype=np.float64) - np.asarray(target, dtype=np.float64), axis=-1)
    return float(1.0 - dist[-1] / dist[0])


def bearing_turned(ee: np.ndarray) -> float:
    """Bearing of the fingertip around the base turned over a (T, 2) trajectory, unwrapped, left positive."""
    ee = np.asarray(ee, dtype=np.float64)
    bearing = np.unwrap(np.arctan2(ee[:, 1], ee[:, 0]))
    return float(bearing[-1] - bearing[0])


def progress(skill: str, ee: np.ndarray, target: np.ndarray) -> float:
    """Signed progress of `skill` over a (T, 2) fingertip trajectory sampled densely enough to unwrap
    the bearing (the 100 Hz physics samples are), with the target position (2,) or (T, 2)."""
    ee = np.asarray(ee, dtype=np.float64)
    if ee.ndim != 2 or ee.shape[1] != 2 or len(ee) == 0:
        raise ValueError(f"ee must have shape (T, 2) with T >= 1, got {ee.shape}")
    if SKILLS[check_skill(skill)]["measure"] == "reach_fraction":
        return reach_fraction(ee, target)
    return bearing_turned(ee)
