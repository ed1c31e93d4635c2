"""Closed-loop arm episodes in Reacher-v5 at 20 Hz, recorded at the 100 Hz physics rate.

One action (two torque commands in [-1, 1]) is held for five 0.01 s physics steps. The policy sees
the state in simulator.arm.skills.STATE_LAYOUT, the layout of the `observation.state` feature the
arm's source mapping (datasets/sources/arm_fleet_ros2.yaml) builds from the logs. The arm cannot
fall: `fell` is always False.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..control import Policy, RecordedEpisode, closed_loop, mean_progress
from .operators import operator_policy
from .skills import EPISODE_STEPS, SUBSTEPS, check_skill, fingertip, make_env, progress, sensed, states

__all__ = ["Episode", "Policy", "simulate_episode", "rollout", "operator_policy", "reference_progress"]


@dataclass
class Episode(RecordedEpisode):
    """Everything one arm episode did, sampled at every physics step (0.01 s): qpos and qvel (S + 1, 4:
    Reacher's q0, q1, target x, target y), actions (n_steps, 2), Reacher-v5 rewards (S,). Never falls."""

    substeps = SUBSTEPS
    sense = staticmethod(sensed)  # what the policy sees: the fingertip pose at 50 Hz, the target at 10 Hz

    @property
    def ee(self) -> np.ndarray:
        """(S + 1, 2) fingertip positions."""
        return fingertip(self.qpos[:, :2])

    @property
    def target(self) -> np.ndarray:
        """(2,) the target's position (placed by the reset seed; it does not move)."""
        return self.qpos[0, 2:4].copy()

    @property
    def progress(self) -> float:
        return progress(self.instruction, self.ee, self.target)

    @property
    def env_return(self) -> float:
        """Return in Reacher-v5's standard units (frame_skip=2, 50 Hz): each pair of physics steps
        counts as one env step with their mean reward."""
        return float(self.rewards.sum() / 2)

    def states(self) -> np.ndarray:
        """(S + 1, 8) exact states in STATE_LAYOUT at every physics step."""
        return states(self.qpos, self.qvel)


def simulate_episode(policy: Policy, instruction: str, seed: int, steps: int = EPISODE_STEPS) -> Episode:
    """Run `policy(state8) -> action2` for `steps` control steps from the env reset with `seed`; the
    policy sees the state as the logs show it (`skills.sensed`)."""
    check_skill(instruction)
    t = closed_loop(make_env(seed), policy, steps, SUBSTEPS, 2, sensed)
    return Episode(instruction, int(seed), t.qpos, t.qvel, t.actions, t.rewards, False)


def rollout(policy: Policy, instruction: str, seed: int, steps: int = EPISODE_STEPS) -> dict:
    """Closed-loop evaluation episode: instruction, seed, progress (signed, per the skill's measure),
    fell (always False), steps (control steps taken), return (Reacher-v5 units)."""
    ep = simulate_episode(policy, instruction, seed, steps)
    return {"instruction": instruction, "seed": int(seed), "progress": ep.progress, "fell": False,
            "steps": ep.n_steps, "return": ep.env_return}


def reference_progress(operator: str, instruction: str, seeds: list[int], steps: int = EPISODE_STEPS) -> float:
    """Mean progress of a scripted arm operator over `seeds` ("random" and "expert" are the 0 and 100
    of D4RL-style normalised scores)."""
    return mean_progress(rollout, operator_policy, operator, instruction, seeds, steps)
