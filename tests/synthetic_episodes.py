"""Small, physically plausible episodes in the canonical table, for validation, score and referee tests.

Ant episodes (`episode`) follow the Ant-v5 state layout (z, quaternion w,x,y,z, 8 joint
angles, base linear and angular velocity, 8 joint velocities) at the fleet's 20 Hz control
rate: joint angles and velocities are consistent derivatives of each other, the base pose
integrates the commanded motion, and the quaternion matches the yaw.

Arm episodes (`arm_episode`) are a planar two-link arm with Reacher's link lengths: the state
is [q1, q2, qd1, qd2], `observation.ee` is the fingertip from forward kinematics of q, and
`observation.target` the goal; `arm_profile` is a robot profile for them.
"""
from __future__ import annotations

import numpy as np
import polars as pl

from foundations.profile import RobotProfile
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
               "turn_left": "turn left", "turn_right": "turn right", "weak": "walk forward", "paused": "walk forward"}
PAUSE = (0.3, 0.6)  # share of the episode: the paused kinds stand still from the first to the second


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _paused_clock(n: int) -> np.ndarray:
    """Seconds of motion at each step when the robot stands still between PAUSE[0] and PAUSE[1] of the episode."""
    i = np.arange(n)
    a, b = int(PAUSE[0] * n), int(PAUSE[1] * n)
    return np.where(i < a, i, np.where(i < b, a, i - (b - a))) * DT


def _pausing(n: int) -> np.ndarray:
    i = np.arange(n)
    return (i >= int(PAUSE[0] * n)) & (i < int(PAUSE[1] * n))


def episode(kind: str, episode_id: str, n: int = 200, seed: int = 0, yaw0: float = 0.7,
            instruction: str | None = None, terminal: bool = False, odometry_noise: float = 0.0) -> pl.DataFrame:
    """One episode of `kind`: walker (0.5 m/s forward, CPG gait), hesitant (stands still with zero
    commands for the first half, then walks), idle (zero commands, still), flail (uniform random
    torques, jittering in place), turn_left / turn_right (0.5 rad/s), weak (a feeble, smooth gait:
    0.07 m/s at a quarter of the walker's amplitude), paused (walks, stands still with zero commands
    from 30 % to 60 % of the episode, walks on). A smooth wrong-skill episode is a turner told to
    walk forward (`instruction=`). `odometry_noise` (m and rad): Gaussian noise of that standard
    deviation on the logged pose, plus a random-walk drift of a tenth of it per step."""
    rng = np.random.default_rng(seed)
    # Time spent moving: the hesitant operator starts the gait only halfway through.
    if kind == "hesitant":
        t = np.maximum(np.arange(n) - n // 2, 0) * DT
    elif kind == "paused":
        t = _paused_clock(n)
    else:
        t = np.arange(n) * DT
    omega = 2 * np.pi * 1.0  # 1 Hz gait
    gait = np.sin(omega * t[:, None] + PHASES)
    gait_rate = omega * np.cos(omega * t[:, None] + PHASES)
    if kind in ("walker", "hesitant", "turn_left", "turn_right", "paused"):
        action = 0.6 * gait
        joints, joint_vel = 0.4 * gait, 0.4 * gait_rate
    elif kind == "weak":
        action = 0.15 * gait
        joints, joint_vel = 0.1 * gait, 0.1 * gait_rate
    elif kind == "idle":
        action = np.zeros((n, 8))
        joints, joint_vel = np.full((n, 8), 0.3), np.zeros((n, 8))
    elif kind == "flail":
        action = rng.uniform(-1, 1, (n, 8))
        joint_vel = rng.normal(0, 4.0, (n, 8))
        joints = 0.3 + np.cumsum(joint_vel, axis=0) * DT * 0.1
    else:
        raise ValueError(kind)
    if kind in ("hesitant", "paused"):
        waiting = ((np.arange(n) < n // 2) if kind == "hesitant" else _pausing(n))[:, None]
        # Joint angles hold their pose while waiting (t is clamped), so only rates and commands stop.
        action, joint_vel = np.where(waiting, 0.0, action), np.where(waiting, 0.0, joint_vel)
    speed, yaw_rate = {"walker": (0.5, 0.0), "hesitant": (0.5, 0.0), "paused": (0.5, 0.0), "weak": (0.07, 0.0),
                       "turn_left": (0.0, 0.5), "turn_right": (0.0, -0.5)}.get(kind, (0.0, 0.0))
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
    if kind == "paused":
        lin[_pausing(n)] = 0.0
    state = np.concatenate([z[:, None], quat, joints, lin, ang, joint_vel], axis=1).astype(np.float32)
    pose = np.concatenate([xy, yaw[:, None]], axis=1)
    if odometry_noise:
        noise_rng = np.random.default_rng([seed, 0x0D0])
        drift = np.cumsum(noise_rng.normal(0, odometry_noise / 10, (n, 3)), axis=0)
        pose = pose + drift + noise_rng.normal(0, odometry_noise, (n, 3))
    pose[:, 2] = _wrap(pose[:, 2])
    pose = pose.astype(np.float32)
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


# ---------------------------------------------------------------------------------------------
# A planar two-link arm.

EE, TARGET = "observation.ee", "observation.target"
LINKS = (0.1, 0.11)  # metres, Reacher's
ARM_SKILLS = {
    "reach the target": {"measure": "reach_fraction", "target": 0.9},
    "sweep left": {"measure": "bearing_rad", "target": 1.5},
    "sweep right": {"measure": "bearing_rad", "target": -1.5},
}
ARM_INSTRUCTION = {"reacher": "reach the target", "away": "reach the target", "arm_idle": "reach the target",
                   "arm_flail": "reach the target", "sweep_left": "sweep left", "sweep_right": "sweep right",
                   "weak_reacher": "reach the target", "paused_sweep": "sweep left"}


def arm_profile(joint_velocity: bool = True, **changes) -> RobotProfile:
    """Robot profile of `arm_episode` tables (without joint velocities when asked)."""
    raw = {
        "name": "two_link_arm", "action_bounds": [-1.0, 1.0],
        "end_effector": {"feature": EE, "start": 0, "count": 2},
        "target": {"feature": TARGET, "start": 0, "count": 2},
        "joint_velocity": {"feature": STATE, "start": 2, "count": 2} if joint_velocity else None,
        "skills": ARM_SKILLS, **changes,
    }
    return RobotProfile.model_validate(raw)


def fingertip(q: np.ndarray) -> np.ndarray:
    """Forward kinematics: (n, 2) joint angles -> (n, 2) fingertip positions."""
    l1, l2 = LINKS
    return np.stack([l1 * np.cos(q[:, 0]) + l2 * np.cos(q[:, 0] + q[:, 1]),
                     l1 * np.sin(q[:, 0]) + l2 * np.sin(q[:, 0] + q[:, 1])], axis=1)


def arm_episode(kind: str, episode_id: str, n: int = 60, seed: int = 0, q1_0: float = 0.3,
                instruction: str | None = None, ee_noise: float = 0.0) -> pl.DataFrame:
    """One arm episode of `kind`: reacher (eases from its start to the target's joint angles in the
    first 60 % of the episode, then holds with zero commands), away (starts near the target and moves
    out to the reacher's start), arm_idle (zero commands, still), arm_flail (uniform random
    torques, jittering joints), sweep_left / sweep_right (shoulder turning at +-0.5 rad/s, elbow held),
    weak_reacher (eases smoothly but only a fifth of the way), paused_sweep (sweeps left, holding
    still from 30 % to 60 % of the episode). A smooth wrong-skill episode is a sweep told to reach
    (`instruction=`). `ee_noise` (m): Gaussian noise of that standard deviation on the logged fingertip."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * DT
    q_start, q_goal = np.array([q1_0, 1.2]), np.array([q1_0 + 1.0, 0.4])
    if kind in ("reacher", "away", "weak_reacher"):
        s = np.clip(np.arange(n) / (0.6 * n), 0.0, 1.0)
        ease = (1 - np.cos(np.pi * s)) / 2  # smooth start and stop
        near_goal = q_goal + 0.2 * (q_start - q_goal)  # leaving from on the target would leave nothing to close
        a, b = (near_goal, q_start) if kind == "away" else (q_start, q_goal)
        q = a + (b - a) * (0.2 if kind == "weak_reacher" else 1.0) * ease[:, None]
        target = np.broadcast_to(fingertip(q_goal[None]), (n, 2))
    elif kind in ("sweep_left", "sweep_right", "paused_sweep"):
        rate = -0.5 if kind == "sweep_right" else 0.5
        clock = _paused_clock(n) if kind == "paused_sweep" else t
        q = np.stack([q1_0 + rate * clock, np.full(n, 0.8)], axis=1)
        target = np.broadcast_to(fingertip(q_goal[None]), (n, 2))
    elif kind == "arm_idle":
        q = np.broadcast_to(q_start, (n, 2)).copy()
        target = np.broadcast_to(fingertip(q_goal[None]), (n, 2))
    elif kind == "arm_flail":
        q = q_start + np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0)
        target = np.broadcast_to(fingertip(q_goal[None]), (n, 2))
    else:
        raise ValueError(kind)
    qd = np.gradient(q, DT, axis=0)
    if kind == "arm_flail":
        action = rng.uniform(-1, 1, (n, 2))
    else:
        # Torque follows the commanded acceleration; zero when the joints hold still.
        qdd = np.gradient(qd, DT, axis=0)
        action = np.clip(0.5 * qdd / max(np.abs(qdd).max(), 1e-9), -1, 1)
    state = np.concatenate([q, qd], axis=1).astype(np.float32)
    is_last = np.arange(n) == n - 1
    return pl.DataFrame(
        {
            "episode_id": [episode_id] * n,
            "step": np.arange(n, dtype=np.int32),
            "timestamp": t,
            STATE: state.tolist(),
            ACTION: action.astype(np.float32).tolist(),
            "reward": [None] * n,
            "is_first": np.arange(n) == 0,
            "is_last": is_last,
            "is_terminal": np.zeros(n, dtype=bool),
            "language_instruction": [instruction or ARM_INSTRUCTION[kind]] * n,
            "robot_id": ["arm-01"] * n,
            "source": ["synthetic"] * n,
            "source_file": [f"{episode_id}.mcap"] * n,
            "source_sha256": ["cd" * 32] * n,
            EE: (fingertip(q) + np.random.default_rng([seed, 0x0EE]).normal(0, ee_noise, (n, 2)) * (ee_noise > 0))
            .astype(np.float32).tolist(),
            TARGET: np.asarray(target, dtype=np.float32).tolist(),
        },
        schema={**POLARS_SCHEMA, EE: pl.List(pl.Float32), TARGET: pl.List(pl.Float32)},
    )
