"""The simulated embodiments, by name: what evaluation, the demo and the tests ask the simulator for.

Each embodiment bundles a fleet generator (ROS 2 logs plus ground truth), closed-loop rollouts and
scripted reference operators. The names of its robot profile and source mapping (YAML under
datasets/) say how the pipeline reads its logs; the state a rollout hands a policy has the layout
of the `observation.state` feature that mapping produces (tests check that they agree).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

Policy = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Embodiment:
    name: str
    robot_profile: str  # datasets/robots/<robot_profile>.yaml
    source: str  # datasets/sources/<source>.yaml: the mapping that reads this fleet's logs
    skills: dict[str, dict[str, Any]]  # instruction -> {"measure", "target"}, as in the robot profile
    control_hz: int
    episode_steps: int
    # (n_episodes, out_dir, seed=0, fault_rate=0.15, episode_steps=None, operators=None, workers=1,
    #  layout=None, noise=None) -> ground-truth path; operators: {name: share} or a mix's name ("default",
    #  "hard"); layout: a simulator.layout.SiteLayout or a preset's name; noise: a simulator.noise.SensorNoise
    #  or a preset's name ("realistic")
    simulate_fleet: Callable[..., Path]
    rollout: Callable[[Policy, str, int, int], dict]  # -> instruction, seed, progress, fell, steps
    reference_progress: Callable[[str, str, list[int], int], float]  # (operator, instruction, seeds, steps)


def _ant() -> Embodiment:
    from . import fleet, rollout, skills

    def ant_rollout(policy: Policy, instruction: str, seed: int, steps: int) -> dict:
        out = rollout.rollout(policy, instruction, seed, steps)
        return {**out, "steps": out["n_steps"]}

    return Embodiment(
        name="ant", robot_profile="ant", source="ant_fleet_ros2", skills=skills.SKILLS,
        control_hz=skills.CONTROL_HZ, episode_steps=skills.EPISODE_STEPS,
        simulate_fleet=fleet.simulate_fleet, rollout=ant_rollout, reference_progress=rollout.reference_progress,
    )


def _arm() -> Embodiment:
    from .arm import fleet, rollout, skills

    return Embodiment(
        name="arm", robot_profile="arm", source="arm_fleet_ros2", skills=skills.SKILLS,
        control_hz=skills.CONTROL_HZ, episode_steps=skills.EPISODE_STEPS,
        simulate_fleet=fleet.simulate_fleet, rollout=rollout.rollout, reference_progress=rollout.reference_progress,
    )


_FACTORIES: dict[str, Callable[[], Embodiment]] = {"ant": _ant, "arm": _arm}
EMBODIMENTS: tuple[str, ...] = tuple(_FACTORIES)


def get_embodiment(name: str) -> Embodiment:
    """The embodiment called `name`; a ValueError lists the known ones."""
    if name not in _FACTORIES:
        raise ValueError(f"no simulated embodiment {name!r}; known: {', '.join(EMBODIMENTS)}")
    return _FACTORIES[name]()
