"""Sensor realism for a fleet's logs: noisy, drifting pose (and twist) measurements and jittered stamps.

Off by default: a fleet without `noise` writes the exact physics samples, byte for byte as before.
With a `SensorNoise` (or a preset's name) the driver edits each episode's log, never the physics or
the commands (operators act on joint encoders and the target, which stay exact):

  the pose topic (EpisodeLog.pose: the Ant's base odometry, the arm's end-effector pose), before the
  site layout is applied:
    position  + white Gaussian noise (position_std_m, x y z) + a random-walk drift in x and y whose
                standard deviation grows as position_drift_m * sqrt(seconds)
    yaw       + white noise (yaw_std_rad) + a random-walk drift (yaw_drift_rad * sqrt(seconds)),
                applied as a rotation about the vertical axis (the quaternion stays a unit one)
    twist     (odometry only) + white noise (linear_std, angular_std) + a slowly drifting bias
                (twist_drift * sqrt(seconds), the same for linear and angular)
  every sensor stream (EpisodeLog.states), after the layout: header stamps, publish and log times of
  each message move together by Gaussian jitter (stamp_jitter_ms), clipped to 3 sigma and to 40 % of
  the stream's spacing so the messages keep their order.

The noise has its own random stream (from the episode's seed), so layouts and faults land as they
would without it. Ground truth gains `sensor_noise`: the settings and the drift reached at the end.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from .mcap_log import NS, EpisodeLog, Topic

NOISE_SEED = 0x0D0E  # the noise stream of an episode: default_rng([episode seed, NOISE_SEED])


@dataclass(frozen=True)
class SensorNoise:
    """How noisy one fleet's sensors are (see the module docstring); the defaults add nothing."""

    name: str = "none"
    position_std_m: float = 0.0
    position_drift_m: float = 0.0  # per sqrt(second)
    yaw_std_rad: float = 0.0
    yaw_drift_rad: float = 0.0  # per sqrt(second)
    linear_std: float = 0.0  # m/s
    angular_std: float = 0.0  # rad/s
    twist_drift: float = 0.0  # bias random walk, per sqrt(second)
    stamp_jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        bad = {k: v for k, v in asdict(self).items() if k != "name" and not (np.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"sensor noise {self.name!r}: every setting must be a finite number >= 0, got {bad}")

    @property
    def active(self) -> bool:
        return any(v for k, v in asdict(self).items() if k != "name")

    def settings(self) -> dict:
        return asdict(self)


def resolve_noise(noise: SensorNoise | str | None, presets: Mapping[str, SensorNoise]) -> SensorNoise:
    """A SensorNoise, or the preset of that name; None and "none" add nothing."""
    if noise is None or noise == "none":
        return SensorNoise()
    if isinstance(noise, SensorNoise):
        return noise
    if noise not in presets:
        raise ValueError(f"unknown sensor noise {noise!r}; known: none, {', '.join(presets)} (or pass a SensorNoise)")
    return presets[noise]


def _random_walk(rng: np.random.Generator, seconds: np.ndarray, scale: float, dims: int) -> np.ndarray:
    """(n, dims) a Brownian path through `seconds` starting at 0, std scale * sqrt(t)."""
    steps = np.sqrt(np.diff(seconds, prepend=seconds[:1]))[:, None] * rng.normal(0.0, scale, (len(seconds), dims))
    return np.cumsum(steps, axis=0)


def perturb_pose(log: EpisodeLog, noise: SensorNoise, rng: np.random.Generator) -> dict:
    """Add noise and drift to the log's pose topic in place; returns the ground-truth record."""
    if log.pose is None:
        raise ValueError("sensor noise needs the log's pose topic (EpisodeLog.pose); this fleet names none")
    t: Topic = log.topic(log.pose)
    p, n = t.payload, len(t)
    seconds = (t.stamp - t.stamp[0]) / NS
    drift_xy = _random_walk(rng, seconds, noise.position_drift_m, 2)
    position = p["position"] + rng.normal(0.0, noise.position_std_m, (n, 3))
    position[:, :2] += drift_xy
    drift_yaw = _random_walk(rng, seconds, noise.yaw_drift_rad, 1)[:, 0]
    half = (drift_yaw + rng.normal(0.0, noise.yaw_std_rad, n)) / 2
    c, s = np.cos(half), np.sin(half)
    w, x, y, z = p["orientation_wxyz"].T
    # (c, 0, 0, s) * (w, x, y, z): turn the measured orientation about the world's vertical axis.
    p["orientation_wxyz"] = np.stack([c * w - s * z, c * x - s * y, c * y + s * x, c * z + s * w], axis=1)
    p["position"] = position
    if "linear" in p:
        bias = _random_walk(rng, seconds, noise.twist_drift, 6)
        p["linear"] = p["linear"] + bias[:, :3] + rng.normal(0.0, noise.linear_std, (n, 3))
        p["angular"] = p["angular"] + bias[:, 3:] + rng.normal(0.0, noise.angular_std, (n, 3))
    end = {"x_m": float(drift_xy[-1, 0]), "y_m": float(drift_xy[-1, 1]), "yaw_rad": float(drift_yaw[-1])}
    return {**noise.settings(), "topic": log.pose, "drift_end": {k: round(v, 6) for k, v in end.items()}}


def jitter_stamps(log: EpisodeLog, noise: SensorNoise, rng: np.random.Generator) -> None:
    """Move every sensor message's stamp, publish and log time by Gaussian jitter, in place, order kept."""
    if not noise.stamp_jitter_ms:
        return
    for name in log.states:
        t = log.topic(name)
        if len(t) == 0:
            continue
        spacing = float(np.min(np.diff(t.stamp))) if len(t) > 1 else float(NS)
        bound = min(3 * noise.stamp_jitter_ms * 1e6, 0.4 * spacing)
        offset = np.clip(rng.normal(0.0, noise.stamp_jitter_ms * 1e6, len(t)), -bound, bound).astype(np.int64)
        t.stamp, t.publish, t.log = t.stamp + offset, t.publish + offset, t.log + offset
