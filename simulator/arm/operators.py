"""The arm's scripted operators: a joint-space PD law tracking a reference that moves toward each
skill's goal at a limited speed.

reach the target: the goal is the inverse-kinematics solution for the target (on the side the
elbow already bends to); sweep left/right: the shoulder turns SWEEP_TOTAL radians from where it
started, the elbow holds. Graded as simulator.operators describes (hesitations, wrong-skill
segments, noise); the medium and poor operators also act on a lagged state (one control step late)
at a slower pace. The hard operators (smooth_wrong_skill, smooth_weak, smooth_random, hesitant) are
described there too; here smooth_weak's reference travels a quarter of the way, smooth_random's
reference wanders about the start pose (WANDER_RAD), and the hesitant operator works at 60 % pace (a
reach takes the expert about a second, so pauses alone would hardly cost it progress) and always
holds the pose when it pauses (let go, Reacher's arm would coast on). The random operator flails:
every 0.15-0.5 s it throws the arm at full torque toward a joint configuration drawn uniformly from
the workspace. (Uniform random torques would spin Reacher's unlimited shoulder at tens of rad/s and
turn the bearing by +-40 rad in 5 s: no reference at all.)
"""
from __future__ import annotations

import numpy as np

from ..operators import Proficiency, ScriptedOperator, hard_operators
from .skills import CONTROL_HZ, LINKS, SKILLS

KP, KD = 0.4, 0.08  # torque command per rad of error / per rad/s (gear 200, armature 1: ~9 rad/s bandwidth)
SWEEP_SPEED = 0.5  # rad/s of the shoulder's reference
SWEEP_TOTAL = 2.0  # rad: how far a sweep turns (the skill's target is 1.5)
REACH_SPEED = 3.0  # rad/s of each joint's reference toward the reach goal
ELBOW_LIMIT = 2.9  # rad, inside Reacher's +-3 rad joint range
RANDOM_KP, RANDOM_KD = 1.0, 0.3  # the flailing operator's PD: saturates the torque far from its pose
RANDOM_HOLD_S = (0.15, 0.5)

ARM_OPERATORS: dict[str, Proficiency | None] = {
    "expert": Proficiency(noise_std=0.02, hesitation_per_s=0.0, hesitation_s=(0.0, 0.0), wrong_skill_share=0.0),
    "medium": Proficiency(noise_std=0.05, hesitation_per_s=0.12, hesitation_s=(0.5, 1.5), wrong_skill_share=0.0,
                          lag_steps=1, pace=0.75),
    "poor": Proficiency(noise_std=0.12, hesitation_per_s=0.25, hesitation_s=(0.8, 2.0), wrong_skill_share=0.35,
                        segment_s=1.5, lag_steps=1, pace=0.6),
    "random": None,  # flailing toward uniform random joint configurations
    **hard_operators(noise_std=0.02, weak=0.25, pause_s=(1.5, 2.5), work_s=(0.5, 1.0), pace=0.6, hold_share=1.0),
}
WANDER_RAD = (1.2, 1.0)  # standard deviation of the wandering reference about the start pose: shoulder, elbow


def inverse_kinematics(target: np.ndarray, elbow_sign: float) -> np.ndarray:
    """Joint angles (q0, q1) putting the fingertip on `target` (x, y), elbow bent to `elbow_sign`'s side;
    out-of-reach targets get the nearest reachable pose."""
    l1, l2 = LINKS
    r2 = float(target @ target)
    q1 = np.arccos(np.clip((r2 - l1 * l1 - l2 * l2) / (2 * l1 * l2), -1.0, 1.0))
    q1 = float(np.clip(q1 if elbow_sign >= 0 else -q1, -ELBOW_LIMIT, ELBOW_LIMIT))
    q0 = np.arctan2(target[1], target[0]) - np.arctan2(l2 * np.sin(q1), l1 + l2 * np.cos(q1))
    return np.array([q0, q1])


class ArmOperator(ScriptedOperator):
    """The arm's operator: `state8 -> action2` (state in simulator.arm.skills.STATE_LAYOUT)."""

    operators = ARM_OPERATORS
    skills = SKILLS
    control_hz = CONTROL_HZ
    n_actions = 2

    def _start(self) -> None:
        self.home: np.ndarray | None = None  # joint angles at the first call
        self.ref = np.zeros(2)
        self.goal, self.speed = np.zeros(2), 0.0

    def _act(self, skill: str, obs: np.ndarray) -> np.ndarray:
        q, qd = obs[:2], obs[2:4]
        if self.home is None:
            self.home, self.ref = q.copy(), q.copy()
        pace = self.profile.pace
        if SKILLS[skill]["measure"] == "reach_fraction":
            goal = inverse_kinematics(obs[6:8], np.sign(self.ref[1]) or 1.0)
            goal[0] = np.unwrap([self.ref[0], goal[0]])[1]  # the shoulder turns the short way round
            self.goal, self.speed = goal, REACH_SPEED * pace
        else:
            turn = SWEEP_TOTAL * np.sign(SKILLS[skill]["target"])
            self.goal, self.speed = self.home + np.array([turn, 0.0]), SWEEP_SPEED * pace
        if self.profile.amplitude != 1.0:  # a feeble operator travels only part of the way
            self.goal = self.home + self.profile.amplitude * (self.goal - self.home)
        return KP * (self.ref - q) - KD * qd

    def _advance(self, skill: str) -> None:
        step = self.speed / self.control_hz
        self.ref = self.ref + np.clip(self.goal - self.ref, -step, step)

    def _random(self, obs: np.ndarray) -> np.ndarray:
        if self.step == 1 or self.step >= self.next_draw:
            self.flail_to = np.array([self.rng.uniform(-np.pi, np.pi), self.rng.uniform(-ELBOW_LIMIT, ELBOW_LIMIT)])
            self.next_draw = self.step + max(1, int(round(self.rng.uniform(*RANDOM_HOLD_S) * self.control_hz)))
        return np.clip(RANDOM_KP * (self.flail_to - obs[:2]) - RANDOM_KD * obs[2:4], -1.0, 1.0)

    def _wander(self, obs: np.ndarray) -> np.ndarray:
        q, qd = obs[:2], obs[2:4]
        if self.home is None:
            self.home = q.copy()
        ref = self.home + np.asarray(WANDER_RAD) * self.smooth_noise()
        ref[1] = np.clip(ref[1], -ELBOW_LIMIT, ELBOW_LIMIT)
        return KP * (ref - q) - KD * qd


def operator_policy(operator: str, instruction: str, seed: int) -> ArmOperator:
    """The scripted arm operator's policy for one episode (any name in ARM_OPERATORS)."""
    return ArmOperator(operator, instruction, seed)
