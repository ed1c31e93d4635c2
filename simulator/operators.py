"""Scripted operators of graded proficiency: the shared behaviour, and the Ant's, driving the tuned gaits.

expert: the skill's controller with slight action noise. medium: moderate noise and occasional
short hesitations (for the arm also a lagged view of the state and a slower pace). poor: heavy
noise, long hesitations and stretches of the wrong skill (another skill's controller). random:
flailing (the Ant: uniform random torques). A hesitation either holds the command (the skill's
clock stops and the PD law keeps the frozen targets: the robot stands still) or zeroes it (no
torque: the robot goes limp); afterwards the skill resumes where it left off.

Hard operators: bad, yet as smooth as the expert (slight noise, no flailing), so smoothness cannot
tell them from good ones; only what the robot does over time can.
  smooth_wrong_skill  another declared skill's controller, performed well, the whole episode
  smooth_weak         the right skill at low amplitude (the Ant: gait oscillations scaled down; the
                      arm: the reference travels a fraction of the way): smooth, little progress
  smooth_random       smooth wandering: the PD law tracks a low-pass-filtered random reference
                      around the robot's rest pose (two cascaded first-order filters, so the
                      commands change as gently as a gait's)
  hesitant            the right skill with long pauses mid-task: after 1-2.5 s of work it stops for
                      seconds (hands off: holding the pose without tremor, or letting go), then
                      resumes, and again

`ScriptedOperator` does the hesitations, pauses, wrong-skill segments, lag, noise and wandering
for every embodiment; a subclass says what the skill's controller commands (`_act`), how its clock
advances (`_advance`), how the random operator flails (`_random`) and how a wandering reference is
tracked (`_wander`).
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
    amplitude: float = 1.0  # share of the skill's motion performed (the Ant: gait amplitudes; the arm: travel)
    hold_share: float = 0.5  # chance that a hesitation holds the pose rather than zeroing the command
    # Planned pauses: work this long (uniform, s) between pauses lasting `hesitation_s`; None: no plan.
    pause_every_s: tuple[float, float] | None = None
    wander_s: float = 0.0  # > 0: wander smoothly instead of performing a skill; the filter's time constant (s)


WANDER_S = 0.3  # time constant of the wandering reference's filters: as gentle as a gait's commands


def hard_operators(noise_std: float, weak: float, pause_s: tuple[float, float], work_s: tuple[float, float],
                   **hesitant: float) -> dict[str, Proficiency]:
    """An embodiment's hard operators: `noise_std` its expert's tremor, `weak` the feeble operator's
    amplitude, the hesitant one pausing `pause_s` after every `work_s` of work (plus `hesitant` fields)."""
    calm = dict(noise_std=noise_std, hesitation_per_s=0.0, hesitation_s=(0.0, 0.0), wrong_skill_share=0.0)
    return {
        "smooth_wrong_skill": Proficiency(**{**calm, "wrong_skill_share": 1.0}, segment_s=float("inf")),
        "smooth_weak": Proficiency(**calm, amplitude=weak),
        "smooth_random": Proficiency(**{**calm, "noise_std": 0.0}, wander_s=WANDER_S),
        "hesitant": Proficiency(**{**calm, "hesitation_s": pause_s}, pause_every_s=work_s, **hesitant),
    }


OPERATORS: dict[str, Proficiency | None] = {
    "expert": Proficiency(noise_std=0.03, hesitation_per_s=0.0, hesitation_s=(0.0, 0.0), wrong_skill_share=0.0),
    "medium": Proficiency(noise_std=0.15, hesitation_per_s=0.12, hesitation_s=(0.5, 1.5), wrong_skill_share=0.0),
    "poor": Proficiency(noise_std=0.4, hesitation_per_s=0.2, hesitation_s=(1.0, 3.0), wrong_skill_share=0.35),
    "random": None,  # uniform random actions
    **hard_operators(noise_std=0.03, weak=0.5, pause_s=(2.0, 3.5), work_s=(1.0, 2.5)),
}
# Ant wandering: standard deviation of the random joint targets about the rest pose (rad), hips and ankles.
WANDER_HIP, WANDER_ANKLE = 0.35, 0.3


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
        if self.profile.pause_every_s is not None:
            self.next_pause = 1 + self._seconds_to_steps(self.profile.pause_every_s)
        if self.profile.wander_s > 0:
            a = float(np.exp(-1.0 / (self.profile.wander_s * self.control_hz)))
            # Stationary standard deviation of two cascaded first-order low-passes fed unit white noise.
            self.wander_gain = (1 - a) ** 2 * np.sqrt((1 + a * a) / (1 - a * a) ** 3)
            self.wander_a = a
            self.wander_state = np.zeros((2, self.n_actions))

    def _seconds_to_steps(self, span: tuple[float, float]) -> int:
        return int(round(self.rng.uniform(*span) * self.control_hz))

    def smooth_noise(self) -> np.ndarray:
        """The next sample of the wandering reference: unit-variance noise low-passed twice (n_actions,)."""
        a, s = self.wander_a, self.wander_state
        s[0] = a * s[0] + (1 - a) * self.rng.normal(0.0, 1.0 / self.wander_gain, self.n_actions)
        s[1] = a * s[1] + (1 - a) * s[0]
        return s[1].copy()

    def _maybe_hesitate(self) -> None:
        """Start a hesitation now if the profile says so (random, or a planned pause that is due)."""
        p = self.profile
        if self.hesitation_left:
            return
        if p.pause_every_s is not None:
            if self.step < self.next_pause:
                return
        elif not (p.hesitation_per_s > 0 and self.rng.random() < p.hesitation_per_s / self.control_hz):
            return
        self.hesitation_left = int(round(self.rng.uniform(*p.hesitation_s) * self.control_hz))
        self.hesitation_mode = "hold" if self.rng.random() < p.hold_share else "zero"
        if p.pause_every_s is not None:
            self.next_pause = self.step + self.hesitation_left + self._seconds_to_steps(p.pause_every_s)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        self.step += 1
        if self.profile is None:
            self.last = self._random(obs)
            return self.last
        p = self.profile
        self.seen.append(obs)  # the oldest kept is what a lagging operator acts on
        if p.wander_s > 0:
            self.last = np.clip(self._wander(self.seen[0]), -1.0, 1.0)
            return self.last
        self._maybe_hesitate()
        seconds = (self.step - 1) / self.control_hz
        skill = self.segment_skills[min(int(seconds // p.segment_s), len(self.segment_skills) - 1)]
        holding = self.hesitation_left > 0
        if holding:
            self.hesitation_left -= 1
            if self.hesitation_mode == "zero":
                self.last = np.zeros(self.n_actions)
                return self.last
        # While holding, the clock stays put: the PD law keeps the frozen targets and the robot stands.
        # A planned pause is hands off: no tremor on top of the held pose.
        if holding and p.pause_every_s is not None:
            action = self._act(skill, self.seen[0])
        else:
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

    def _wander(self, obs: np.ndarray) -> np.ndarray:
        """The command tracking a smoothly wandering reference (draw it with `smooth_noise`)."""
        raise NotImplementedError


class OperatorPolicy(ScriptedOperator):
    """The Ant's operator: `obs27 -> action8`, the skill's CPG gait tracked by a PD law."""

    def _start(self) -> None:
        self.gaits = load_gaits()
        if self.profile.amplitude != 1.0:
            self.gaits = {name: g.scaled(self.profile.amplitude) for name, g in self.gaits.items()}
        self.clock = self.rng.uniform(0.0, 1.0 / self.gaits[self.instruction].freq_hz)  # random start phase

    def _act(self, skill: str, obs: np.ndarray) -> np.ndarray:
        return self.gaits[skill].action(self.clock, obs)

    def _advance(self, skill: str) -> None:
        self.clock += 1.0 / self.control_hz

    def _random(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.n_actions)

    def _wander(self, obs: np.ndarray) -> np.ndarray:
        # Random joint targets about the instructed gait's rest pose (its oscillations' centres).
        gait = self.gaits[self.instruction]
        rest = gait.scaled(0.0).targets(0.0)
        spread = np.tile([WANDER_HIP, WANDER_ANKLE], 4)
        return gait.track(rest + spread * self.smooth_noise(), obs)


def check_operator(operator: str) -> str:
    """Return `operator` if it is known, else raise a ValueError listing the operators."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; known operators: {list(OPERATORS)}")
    return operator


def operator_policy(operator: str, instruction: str, seed: int) -> OperatorPolicy:
    """The scripted Ant operator's policy for one episode (any name in OPERATORS)."""
    return OperatorPolicy(operator, instruction, seed)
