"""Small, physically plausible Ant episodes in the canonical table, for validation and score tests.

Kinematics follow the Ant-v5 state layout (z, quaternion w,x,y,z, 8 joint angles, base
linear and angular velocity, 8 joint velocities) at the fleet's 20 Hz control rate:
joint angles and velocities are consistent derivatives of each other, the base pose
integrates the commanded motion, and the quaternion matches the yaw.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from foundations.schema import ACTION, POLARS_SCHEMA, POSE, STATE

RATE_HZ = 20.0
DT = 1.0 / RATE_HZ
PHASES = np.array([0.0, np.pi / 2, np.pi, 3 * np.pi / 2, np.pi, 3 * np.pi / 2, 0.0, np.pi / 2])
SKILLS = {
    "walk forward": {"measure": "forward_m", "target": 2.0},
    "turn left": {"measure": "yaw_rad", "target": 3.0},
    "turn right": {"measure": "yaw_rad", "target": -3.0},
}
INSTRUCTION = {"walker": "walk forward", "hesitant": "walk forward", "idle": "walk forward", "flail": "walk forward",
               "turn_left": "turn left", "turn_right": "turn right"}


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def episode(kind: str, episode_id: str, n: int = 200, seed: int = 0, yaw0: float = 0.7,
            instruction: str | None = None, terminal: bool = False) -> pl.DataFrame:
    """One episode of `kind`: walker (0.5 m/s forward, CPG gait), hesitant (stands still with zero
    commands for the first half, then walks), idle (zero commands, still), flail (uniform random
    torques, jittering in place), turn_left / turn_right (0.5 rad/s)."""
    rng = np.random.default_rng(seed)
    # Time spent moving: the hesitant operator starts the gait only halfway through.
    t = np.maximum(np.arange(n) - n // 2, 0) * DT if kind == "hesitant" else np.arange(n) * DT
    omega = 2 * np.pi * 1.0  # 1 Hz gait
    gait = np.sin(omega * t[:, None] + PHASES)
    gait_rate = omega * np.cos(omega * t[:, None] + PHASES)
    if kind in ("walker", "hesitant", "turn_left", "turn_right"):
        action = 0.6 * gait
        joints, joint_vel = 0.4 * gait, 0.4 * gait_rate
    elif kind == "idle":
        action = np.zeros((n, 8))
        joints, joint_vel = np.full((n, 8), 0.3), np.zeros((n, 8))
    elif kind == "flail":
        action = rng.uniform(-1, 1, (n, 8))
        joint_vel = rng.normal(0, 4.0, (n, 8))
        joints = 0.3 + np.cumsum(joint_vel, axis=0) * DT * 0.1
    else:
        raise ValueError(kind)
    if kind == "hesitant":
        waiting = (np.arange(n) < n // 2)[:, None]
        # Joint angles hold their t=0 pose while waiting (t is clamped), so only rates and commands stop.
        action, joint_vel = np.where(waiting, 0.0, action), np.where(waiting, 0.0, joint_vel)
    speed, yaw_rate = {"walker": (0.5, 0.0), "hesitant": (0.5, 0.0), "turn_left": (0.0, 0.5),
                       "turn_right": (0.0, -0.5)}.get(kind, (0.0, 0.0))
    if kind == "flail":
        yaw = yaw0 + np.cumsum(rng.normal(0, 0.02, n))
        xy = np.cumsum(rng.normal(0, 0.01, (n, 2)), axis=0)
    else:
        yaw = yaw0 + yaw_rate * t
        xy = np.array([np.cos(yaw0), np.sin(yaw0)])[None, :] * (speed * t)[:, None]
    z = np.full(n, 0.55)
    quat = np.stack([np.cos(yaw / 2), np.zeros(n), np.zeros(n), np.sin(yaw / 2)], axis=1)
    lin = np.zeros((n, 3))
    lin[:, 0], lin[:, 1] = speed * np.cos(yaw), speed * np.sin(yaw)
    ang = np.zeros((n, 3))
    ang[:, 2] = yaw_rate
    if kind == "hesitant":
        lin[: n // 2] = 0.0
    state = np.concatenate([z[:, None], quat, joints, lin, ang, joint_vel], axis=1).astype(np.float32)
    pose = np.concatenate([xy, _wrap(yaw)[:, None]], axis=1).astype(np.float32)
    is_last = np.arange(n) == n - 1
    return pl.DataFrame(
        {
            "episode_id": [episode_id] * n,
            "step": np.arange(n, dtype=np.int32),
            "timestamp": np.arange(n) * DT,
            STATE: state.tolist(),
            ACTION: action.astype(np.float32).tolist(),
            "reward": [None] * n,
            "is_first": np.arange(n) == 0,
            "is_last": is_last,
            "is_terminal": is_last & terminal,
            "language_instruction": [instruction or INSTRUCTION[kind]] * n,
            "robot_id": ["ant-01"] * n,
            "source": ["synthetic"] * n,
            "source_file": [f"{episode_id}.mcap"] * n,
            "source_sha256": ["ab" * 32] * n,
            POSE: pose.tolist(),
        },
        schema={**POLARS_SCHEMA, POSE: pl.List(pl.Float32)},
    )


def table(*episodes: pl.DataFrame) -> pl.DataFrame:
    """Concatenate episodes into one table."""
    return pl.concat(episodes)
