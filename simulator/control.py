"""The closed control loop every embodiment shares: a policy acting at the control rate on a MuJoCo
env stepped at its physics rate, every physics sample recorded.

The policy sees what the fleet's logs show at that instant (`sense`): the newest sample of each
sensor stream at its own rate, so a state handed to a policy equals the `observation.state` that
ingestion builds from the logs at the same control step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import gymnasium as gym
import numpy as np

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass
class Trace:
    """qpos/qvel row j is the state j physics steps after reset (row 0 the reset state); action k
    is applied from physics step `substeps * k` on; rewards[j] is the env's reward of step j + 1."""

    qpos: np.ndarray
    qvel: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool


@dataclass
class RecordedEpisode:
    """Everything one episode did, sampled at every physics step: qpos/qvel row j is the state j physics
    steps after reset (row 0 the reset state); action k is applied from physics step `substeps * k` on.
    An embodiment's subclass sets `substeps` and `sense` and adds its measures."""

    instruction: str
    seed: int
    qpos: np.ndarray  # (S + 1, nq)
    qvel: np.ndarray  # (S + 1, nv)
    actions: np.ndarray  # (n_steps, n_actions)
    rewards: np.ndarray  # (S,) the env's reward of each physics step
    fell: bool = False
    substeps: ClassVar[int] = 5

    @staticmethod
    def sense(qpos: np.ndarray, qvel: np.ndarray, j: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_steps(self) -> int:
        return len(self.actions)

    @property
    def n_substeps(self) -> int:
        return len(self.rewards)

    def policy_states(self) -> np.ndarray:
        """(n_steps, state dims) what the policy saw at each control step, as the logs show it."""
        return np.stack([self.sense(self.qpos, self.qvel, self.substeps * k) for k in range(self.n_steps)])


def closed_loop(env: gym.Env, policy: Policy, steps: int, substeps: int, n_actions: int,
                sense: Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> Trace:
    """Run `policy(sense(qpos, qvel, j)) -> action` for up to `steps` control steps, each held for
    `substeps` physics steps; stops at the physics step where the env terminates. Closes the env.

    `sense` gets the qpos and qvel rows recorded so far and the current physics sample j."""
    if steps < 1:
        env.close()
        raise ValueError(f"steps must be >= 1, got {steps}")
    data = env.unwrapped.data
    n_sub = steps * substeps
    qpos = np.empty((n_sub + 1, data.qpos.size))
    qvel = np.empty((n_sub + 1, data.qvel.size))
    rewards = np.empty(n_sub)
    actions = np.empty((steps, n_actions))
    qpos[0], qvel[0] = data.qpos, data.qvel
    j, terminated, k = 0, False, 0
    try:
        for k in range(steps):
            action = np.asarray(policy(sense(qpos, qvel, j)), dtype=np.float64).reshape(-1)
            if action.shape != (n_actions,) or not np.all(np.isfinite(action)):
                raise ValueError(f"policy returned {action!r} at control step {k}; it must return "
                                 f"{n_actions} finite torques in [-1, 1]")
            action = np.clip(action, -1.0, 1.0)
            actions[k] = action
            for _ in range(substeps):
                _, reward, terminated, _, _ = env.step(action)
                j += 1
                qpos[j], qvel[j], rewards[j - 1] = data.qpos, data.qvel, reward
                if terminated:
                    break
            if terminated:
                break
    finally:
        env.close()
    return Trace(qpos[: j + 1], qvel[: j + 1], actions[: k + 1], rewards[:j], bool(terminated))


def mean_progress(rollout: Callable[..., dict], operator_policy: Callable[[str, str, int], Policy],
                  operator: str, instruction: str, seeds: list[int], steps: int) -> float:
    """Mean progress of a scripted operator over `seeds`: with "random" and "expert" these are the
    0 and 100 of D4RL-style normalised scores."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    return float(np.mean([rollout(operator_policy(operator, instruction, s), instruction, s, steps)["progress"]
                          for s in seeds]))
