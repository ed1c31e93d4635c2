"""Scripted operators of graded proficiency: the shared behaviour, and the Ant's, driving the tuned gaits.

expert: the skill's controller with slight action noise. medium: moderate noise and occasional
short hesitations (for the arm also a lagged view of the state and a slower pace). poor: heavy
noise, long hesitations and stretches of the wrong skill (another skill's controller). random:
flailing (the Ant: uniform random torques). A hesitation either holds the command (the skill's
clock stops and the PD law keeps the frozen targets: the robot stands still) or zeroes it (no
torque: the robot goes limp); afterwards the skill resumes where it left off.

`ScriptedOperator` does the hesitations, wrong-skill segments, lag and noise for every embodiment;
a subclass says what the skill's controller commands (`_act`), how its clock advances (`_advance`)
and how the random operator flails (`_random`).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .cpg import load_gaits
from .skills import CONTROL_HZ, SKILLS


@dataclass(frozen=True)
class Proficiency:
    """How an operator deviates from the skill's controller."""

    noise_std: float  # Gaussian action noise, in torque command units
    hesitation_per_s: float  # rate of starting a hesitation
    hesitation_s: tuple[float, float]  # uniform range of its duration
    wrong_skill_share: float  # chance that each segment uses another skill's controller
    segment_s: float = 2.0
    lag_steps: int = 0  # the operator acts on the state this many control steps old
    pace: float = 1.0  # share of the expert's speed along the skill (embodiments that use it)


OPERATORS: dict[str, Proficiency | None] = {
    "expert": Proficiency(noise_std=0.03, hesitation_per_s=0.0, hesitation_s=(0.0, 0.0), wrong_skill_share=0.0),
    "medium": Proficiency(noise_std=0.15, hesitation_per_s=0.12, hesitation_s=(0.5, 1.5), wrong_skill_share=0.0),
    "poor": Proficiency(noise_std=0.4, hesitation_per_s=0.2, hesitation_s=(1.0, 3.0), wrong_skill_share=0.35),
    "random": None,  # uniform random actions
}


class ScriptedOperator:
    """A stateful closed-loop policy `state -> action`, called once per control step.

    Deterministic given (operator, instruction, seed). Build a fresh one per episode.
    Subclasses set the class attributes and implement `_start`, `_act`, `_advance`, `_random`.
    """

    operators: Mapping[str, Proficiency | None] = OPERATORS
    skills: Mapping[str, Mapping[str, Any]] = SKILLS
    control_hz: int = CONTROL_HZ
    n_actions: int = 8

    def __init__(self, operator: str, instruction: str, seed: int):
        if operator not in self.operators:
            raise ValueError(f"unknown operator {operator!r}; known operators: {list(self.operators)}")
        if instruction not in self.skills:
            raise ValueError(f"unknown skill {instruction!r}; known skills: {sorted(self.skills)}")
        self.operator, self.instruction = operator, instruction
        self.profile = self.operators[operator]
        self.rng = np.random.default_rng([int(seed), 0x0BE7])  # independent of the env's reset stream
        self.step = 0
        self.hesitation_left = 0
        self.hesitation_mode = "hold"
        self.last = np.zeros(self.n_actions)
        self.segment_skills: list[str] = []
        if self.profile is None:
            return
        self.seen: deque[np.ndarray] = deque(maxlen=self.profile.lag_steps + 1)
        self._start()
        # Decide each segment's skill up front so the choice does not depend on the path.
        others = [s for s in self.skills if s != instruction]
        n_seg = 64
        wrong = self.rng.random(n_seg) < self.profile.wrong_skill_share
        picks = self.rng.integers(0, len(others), n_seg)
        self.segment_skills = [others[p] if w else instruction for w, p in zip(wrong, picks)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        self.step += 1
        if self.profile is None:
            self.last = self._random(obs)
            return self.last
        p = self.profile
        self.seen.append(obs)  # the oldest kept is what a lagging operator acts on
        if self.hesitation_left == 0 and p.hesitation_per_s > 0 and self.rng.random() < p.hesitation_per_s / self.control_hz:
            self.hesitation_left = int(round(self.rng.uniform(*p.hesitation_s) * self.control_hz))
            self.hesitation_mode = "hold" if self.rng.random() < 0.5 else "zero"
        seconds = (self.step - 1) / self.control_hz
        skill = self.segment_skills[min(int(seconds // p.segment_s), len(self.segment_skills) - 1)]
        holding = self.hesitation_left > 0
        if holding:
            self.hesitation_left -= 1
            if self.hesitation_mode == "zero":
                self.last = np.zeros(self.n_actions)
                return self.last
        # While holding, the clock stays put: the PD law keeps the frozen targets and the robot stands.
        action = self._act(skill, self.seen[0]) + self.rng.normal(0.0, p.noise_std, self.n_actions)
        if not holding:
            self._advance(skill)
        self.last = np.clip(action, -1.0, 1.0)
        return self.last

    def _start(self) -> None:
        """Set up the skill controller (called once, before the segments are drawn)."""

    def _act(self, skill: str, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _advance(self, skill: str) -> None:
        """Move the skill's clock on by one control step."""

    def _random(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OperatorPolicy(ScriptedOperator):
    """The Ant's operator: `obs27 -> action8`, the skill's CPG gait tracked by a PD law."""

    def _start(self) -> None:
        self.gaits = load_gaits()
        self.clock = self.rng.uniform(0.0, 1.0 / self.gaits[self.instruction].freq_hz)  # random start phase

    def _act(self, skill: str, obs: np.ndarray) -> np.ndarray:
        return self.gaits[skill].action(self.clock, obs)

    def _advance(self, skill: str) -> None:
        self.clock += 1.0 / self.control_hz

    def _random(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.n_actions)


def check_operator(operator: str) -> str:
    """Return `operator` if it is known, else raise a ValueError listing the operators."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; known operators: {list(OPERATORS)}")
    return operator


def operator_policy(operator: str, instruction: str, seed: int) -> OperatorPolicy:
    """The scripted Ant operator's policy for one episode (expert, medium, poor or random)."""
    return OperatorPolicy(operator, instruction, seed)
