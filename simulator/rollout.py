"""Closed-loop episodes in Ant-v5 at 20 Hz, recorded at the 100 Hz physics rate.

One action is held for five 0.01 s physics steps. A fall (Ant-v5's unhealthy
termination: torso z outside its healthy range, or a non-finite state) ends the
episode at the physics step where it happens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .control import Policy, RecordedEpisode, closed_loop, mean_progress
from .operators import operator_policy
from .skills import EPISODE_STEPS, SUBSTEPS, check_skill, make_env, poses_from_qpos, sensed, trajectory_progress

__all__ = ["Episode", "Policy", "simulate_episode", "rollout", "operator_policy", "reference_progress"]


@dataclass
class Episode(RecordedEpisode):
    """Everything one Ant episode did, sampled at every physics step (0.01 s): qpos (S + 1, 15),
    qvel (S + 1, 14), actions (n_steps, 8, actuator order), Ant-v5 rewards (S,), whether it fell."""

    substeps = SUBSTEPS
    sense = staticmethod(sensed)  # what the policy sees: odometry at 50 Hz

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
    """Run `policy(obs27) -> action8` for up to `steps` control steps from the env reset with `seed`.

    The policy sees the Ant-v5 observation as the logs show it (`skills.sensed`)."""
    check_skill(instruction)
    t = closed_loop(make_env(seed), policy, steps, SUBSTEPS, 8, sensed)
    return Episode(instruction, int(seed), t.qpos, t.qvel, t.actions, t.rewards, t.terminated)


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
    return mean_progress(rollout, operator_policy, operator, instruction, seeds, steps)
