"""Open-loop central pattern generator tracked by a PD law: the fleet's gaits.

Each leg gets sinusoidal hip and ankle targets with its own phase; a PD law at the
20 Hz control rate turns target errors into the Ant's 8 torque commands in [-1, 1].
Parameters per skill are tuned once by `python -m simulator.tune` and stored in
cpg_params.yaml beside this module; nothing is tuned at run time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from .skills import CONTROL_HZ, JOINT_OF_ACTUATOR, SKILLS, check_skill

PARAMS_FILE = Path(__file__).with_name("cpg_params.yaml")

# Ankles 2 and 3 bend the other way: their joint ranges are negative.
ANKLE_SIGN = np.array([1.0, -1.0, -1.0, 1.0])
# Evaluate targets half a control period ahead: the torque is held for 50 ms.
TARGET_LEAD_S = 0.5 / CONTROL_HZ

# Search box of every parameter, used by the tuner to map [0, 1] vectors to gaits.
BOUNDS: dict[str, tuple[float, float, int]] = {
    "freq_hz": (0.5, 3.0, 1),
    "kp": (0.5, 4.0, 1),
    "kd": (0.0, 0.3, 1),
    "hip_amp": (0.0, 0.5, 4),
    "hip_offset": (-0.3, 0.3, 4),
    "hip_phase": (0.0, 2 * np.pi, 4),
    "ankle_amp": (0.0, 0.4, 4),
    "ankle_offset": (0.5, 1.25, 4),
    "ankle_phase": (0.0, 2 * np.pi, 4),
}


@dataclass
class Gait:
    """One skill's CPG and PD gains; per-leg arrays run legs 1..4 (qpos order)."""

    freq_hz: float
    kp: float
    kd: float
    hip_amp: list[float] = field(default_factory=lambda: [0.0] * 4)
    hip_offset: list[float] = field(default_factory=lambda: [0.0] * 4)
    hip_phase: list[float] = field(default_factory=lambda: [0.0] * 4)
    ankle_amp: list[float] = field(default_factory=lambda: [0.0] * 4)
    ankle_offset: list[float] = field(default_factory=lambda: [0.8] * 4)
    ankle_phase: list[float] = field(default_factory=lambda: [0.0] * 4)

    def targets(self, t: float) -> np.ndarray:
        """Joint targets (8, qpos order) at time t seconds into the gait."""
        omega = 2 * np.pi * self.freq_hz * t
        hip = np.asarray(self.hip_offset) + np.asarray(self.hip_amp) * np.sin(omega + np.asarray(self.hip_phase))
        ankle = ANKLE_SIGN * (
            np.asarray(self.ankle_offset)
            + np.asarray(self.ankle_amp) * np.sin(omega + np.asarray(self.hip_phase) + np.asarray(self.ankle_phase))
        )
        return np.stack([hip, ankle], axis=1).reshape(8)

    def action(self, t: float, obs: np.ndarray) -> np.ndarray:
        """PD torque command (8, actuator order, in [-1, 1]) from a 27-dim Ant-v5 observation."""
        return self.track(self.targets(t + TARGET_LEAD_S), obs)

    def track(self, targets: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """PD torque command (8, actuator order, in [-1, 1]) toward joint `targets` (8, qpos order)."""
        q, qd = obs[5:13], obs[19:27]
        u = self.kp * (targets - q) - self.kd * qd
        return np.clip(u, -1.0, 1.0)[JOINT_OF_ACTUATOR]

    def scaled(self, amplitude: float) -> "Gait":
        """The same gait with every oscillation's amplitude times `amplitude` (offsets and phases kept)."""
        return replace(self, hip_amp=[a * amplitude for a in self.hip_amp],
                       ankle_amp=[a * amplitude for a in self.ankle_amp])

    def to_vector(self) -> np.ndarray:
        """Parameters scaled to [0, 1] in BOUNDS order (the tuner's search space)."""
        parts = []
        for name, (lo, hi, _) in BOUNDS.items():
            parts.append((np.atleast_1d(np.asarray(getattr(self, name), dtype=float)) - lo) / (hi - lo))
        return np.concatenate(parts)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "Gait":
        """Inverse of `to_vector`; values are clipped into the box (phases wrap)."""
        out, i = {}, 0
        for name, (lo, hi, n) in BOUNDS.items():
            x = np.asarray(v[i : i + n], dtype=float)
            x = np.mod(x, 1.0) if name.endswith("phase") else np.clip(x, 0.0, 1.0)
            vals = lo + x * (hi - lo)
            out[name] = float(vals[0]) if n == 1 else [float(a) for a in vals]
            i += n
        return cls(**out)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else [round(a, 5) for a in v]) for k, v in asdict(self).items()}


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Gait]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; create it once with `python -m simulator.tune`")
    doc = yaml.safe_load(path.read_text())
    gaits = {name: Gait(**params) for name, params in doc["gaits"].items()}
    missing = set(SKILLS) - set(gaits)
    if missing:
        raise ValueError(f"{path} lacks gaits for {sorted(missing)}; rerun `python -m simulator.tune`")
    return gaits


def load_gaits(path: Path = PARAMS_FILE) -> dict[str, Gait]:
    """The tuned gait of every skill, read from cpg_params.yaml."""
    return _load(Path(path))


def gait_for(skill: str) -> Gait:
    """The tuned gait of one skill."""
    return load_gaits()[check_skill(skill)]
