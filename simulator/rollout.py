"""Closed-loop episodes in Ant-v5 at 20 Hz, recorded at the 100 Hz physics rate.

One action is held for five 0.01 s physics steps. A fall (Ant-v5's unhealthy
termination: torso z outside its healthy range, or a non-finite state) ends the
episode at the physics step where it happens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .operators import operator_policy
from .skills import EPISODE_STEPS, SUBSTEPS, check_skill, make_env, observe, poses_from_qpos, trajectory_progress

Policy = Callable[[np.ndarray], np.ndarray]

__all__ = ["Episode", "simulate_episode", "rollout", "operator_policy", "reference_progress"]


@dataclass
class Episode:
    """Everything one episode did, sampled at every physics step.

    qpos/qvel row j is the state j physics steps (j * 0.01 s) after reset, row 0 the
    reset state; action k is applied from physics step 5k on (actuator order).
    """

    instruction: str
    seed: int
    qpos: np.ndarray  # (S + 1, 15)
    qvel: np.ndarray  # (S + 1, 14)
    actions: np.ndarray  # (n_steps, 8)
    rewards: np.ndarray  # (S,) Ant-v5 reward of each physics step
    fell: bool

    @property
    def n_steps(self) -> int:
        return len(self.actions)

    @property
    def n_substeps(self) -> int:
        return len(self.rewards)

    @property
    def poses(self) -> np.ndarray:
        """(S + 1, 3) base poses [x, y, yaw], yaw unwrapped."""
        return poses_from_qpos(self.qpos)

    @property
    def progress(self) -> float:
        return trajectory_progress(self.instruction, self.poses)

    @property
    def env_return(self) -> float:
        """Return in Ant-v5's standard 20 Hz units (frame_skip=5): each control step's
        reward is the mean of its five physics-step rewards (same forward, healthy and
        control terms), so returns compare with published Ant-v5 numbers."""
        return float(self.rewards.sum() / SUBSTEPS)

    def observations(self) -> np.ndarray:
        """(S + 1, 27) Ant-v5 observations at every physics step."""
        return np.concatenate([self.qpos[:, 2:], self.qvel], axis=1)


def simulate_episode(policy: Policy, instruction: str, seed: int, steps: int = EPISODE_STEPS) -> Episode:
    """Run `policy(obs27) -> action8` for up to `steps` control steps from the env reset with `seed`."""
    check_skill(instruction)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    env = make_env(seed)
    data = env.unwrapped.data
    n_sub = steps * SUBSTEPS
    qpos = np.empty((n_sub + 1, data.qpos.size))
    qvel = np.empty((n_sub + 1, data.qvel.size))
    rewards = np.empty(n_sub)
    actions = np.empty((steps, 8))
    qpos[0], qvel[0] = data.qpos, data.qvel
    obs, j, fell, k = observe(env), 0, False, 0
    try:
        for k in range(steps):
            action = np.asarray(policy(obs), dtype=np.float64).reshape(-1)
            if action.shape != (8,) or not np.all(np.isfinite(action)):
                raise ValueError(
                    f"policy returned {action!r} at control step {k}; it must return 8 finite torques in [-1, 1]"
                )
            action = np.clip(action, -1.0, 1.0)
            actions[k] = action
            for _ in range(SUBSTEPS):
                obs, reward, terminated, _, _ = env.step(action)
                j += 1
                qpos[j], qvel[j], rewards[j - 1] = data.qpos, data.qvel, reward
                if terminated:
                    fell = True
                    break
            if fell:
                break
    finally:
        env.close()
    return Episode(instruction, int(seed), qpos[: j + 1], qvel[: j + 1], actions[: k + 1], rewards[:j], fell)


def rollout(policy: Policy, instruction: str, seed: int, steps: int = EPISODE_STEPS) -> dict:
    """Closed-loop evaluation episode: progress (signed, per the skill's measure),
    return (Ant-v5 20 Hz units), fell, n_steps (control steps actually taken)."""
    ep = simulate_episode(policy, instruction, seed, steps)
    return {
        "instruction": instruction,
        "seed": int(seed),
        "progress": ep.progress,
        "return": ep.env_return,
        "fell": ep.fell,
        "n_steps": ep.n_steps,
    }


def reference_progress(operator: str, instruction: str, seeds: list[int], steps: int = EPISODE_STEPS) -> float:
    """Mean progress of a scripted operator over `seeds`: with "random" and "expert" these
    are the 0 and 100 of D4RL-style normalised scores."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    return float(np.mean([rollout(operator_policy(operator, instruction, s), instruction, s, steps)["progress"]
                          for s in seeds]))
