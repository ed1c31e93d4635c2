"""Scripted operators of graded proficiency driving the tuned gaits.

expert: the skill's gait with slight action noise. medium: moderate noise and
occasional short hesitations. poor: heavy noise, long hesitations and stretches of
the wrong gait (another skill's). random: uniform random torques (flailing).
A hesitation either holds the command (the gait clock stops and the PD law keeps the
frozen joint targets: the Ant stands still) or zeroes it (no torque: the Ant goes
limp); afterwards the gait resumes where it left off.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cpg import load_gaits
from .skills import CONTROL_HZ, SKILLS, check_skill


@dataclass(frozen=True)
class Proficiency:
    """How an operator deviates from the skill's gait."""

    noise_std: float  # Gaussian action noise, in torque command units
    hesitation_per_s: float  # rate of starting a hesitation
    hesitation_s: tuple[float, float]  # uniform range of its duration
    wrong_gait_share: float  # chance that each segment uses another skill's gait
    segment_s: float = 2.0


OPERATORS: dict[str, Proficiency | None] = {
    "expert": Proficiency(noise_std=0.03, hesitation_per_s=0.0, hesitation_s=(0.0, 0.0), wrong_gait_share=0.0),
    "medium": Proficiency(noise_std=0.15, hesitation_per_s=0.12, hesitation_s=(0.5, 1.5), wrong_gait_share=0.0),
    "poor": Proficiency(noise_std=0.4, hesitation_per_s=0.2, hesitation_s=(1.0, 3.0), wrong_gait_share=0.35),
    "random": None,  # uniform random actions
}


def check_operator(operator: str) -> str:
    """Return `operator` if it is known, else raise a ValueError listing the operators."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; known operators: {list(OPERATORS)}")
    return operator


class OperatorPolicy:
    """A stateful closed-loop policy `obs27 -> action8`, called once per 20 Hz control step.

    Deterministic given (operator, instruction, seed). Build a fresh one per episode.
    """

    def __init__(self, operator: str, instruction: str, seed: int):
        self.operator = check_operator(operator)
        self.instruction = check_skill(instruction)
        self.profile = OPERATORS[operator]
        self.rng = np.random.default_rng([int(seed), 0x0BE7])  # independent of the env's reset stream
        self.step = 0
        self.hesitation_left = 0
        self.hesitation_mode = "hold"
        self.last = np.zeros(8)
        self.segment_gaits: list[str] = []
        if self.profile is None:
            return
        self.gaits = load_gaits()
        self.clock = self.rng.uniform(0.0, 1.0 / self.gaits[instruction].freq_hz)  # random start phase
        # Decide each segment's gait up front so the choice does not depend on the path.
        others = [s for s in SKILLS if s != instruction]
        n_seg = 64
        wrong = self.rng.random(n_seg) < self.profile.wrong_gait_share
        picks = self.rng.integers(0, len(others), n_seg)
        self.segment_gaits = [others[p] if w else instruction for w, p in zip(wrong, picks)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        self.step += 1
        if self.profile is None:
            self.last = self.rng.uniform(-1.0, 1.0, 8)
            return self.last
        p = self.profile
        if self.hesitation_left == 0 and p.hesitation_per_s > 0 and self.rng.random() < p.hesitation_per_s / CONTROL_HZ:
            self.hesitation_left = int(round(self.rng.uniform(*p.hesitation_s) * CONTROL_HZ))
            self.hesitation_mode = "hold" if self.rng.random() < 0.5 else "zero"
        seconds = (self.step - 1) / CONTROL_HZ
        segment = min(int(seconds // p.segment_s), len(self.segment_gaits) - 1)
        gait = self.gaits[self.segment_gaits[segment]]
        holding = self.hesitation_left > 0
        if holding:
            self.hesitation_left -= 1
            if self.hesitation_mode == "zero":
                self.last = np.zeros(8)
                return self.last
        # While holding, the clock stays put: the PD law keeps the frozen targets and the Ant stands.
        action = gait.action(self.clock, obs) + self.rng.normal(0.0, p.noise_std, 8)
        if not holding:
            self.clock += 1.0 / CONTROL_HZ
        self.last = np.clip(action, -1.0, 1.0)
        return self.last


def operator_policy(operator: str, instruction: str, seed: int) -> OperatorPolicy:
    """The scripted operator's policy for one episode (expert, medium, poor or random)."""
    return OperatorPolicy(operator, instruction, seed)
