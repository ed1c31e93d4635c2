"""Simulate a fleet of Reacher arms whose operators log ROS 2 MCAP files, with ground truth beside them.

    from simulator.arm.fleet import simulate_fleet
    truth = simulate_fleet(60, Path("landing/arm_fleet_ros2/batch-001"), seed=0)

Every file holds one episode of EPISODE_STEPS control steps (5 s); topics as in simulator/arm/log.py.
simulator.driver does the work shared with the Ant fleet (operators, start times, names, faults,
site layouts, ground truth); the ground truth adds `target_xy`, the target the reset seed placed.

Operator mixes: operators="hard" (HARD_OPERATORS) as for the Ant (simulator.driver). Sensor noise
(simulator.noise; off by default), noise="realistic" (REALISTIC_NOISE): /arm/ee_pose position +-2 mm
white noise and a drift of 1 mm per sqrt(s) in x and y, yaw +-0.01 rad and 0.005 rad per sqrt(s);
sensor stamps jittered by 1 ms. Joint encoders and the target stay exact.
"""
from __future__ import annotations

import numpy as np

from .. import driver
from ..layout import SiteLayout
from ..mcap_log import EpisodeLog
from ..noise import SensorNoise
from .log import build_log
from .operators import operator_policy
from .rollout import simulate_episode
from .skills import CONTROL_HZ, EPISODE_STEPS, SKILLS

ROBOTS = tuple(f"arm-{i:02d}" for i in range(1, 5))
LAYOUTS = {"default": SiteLayout()}
HARD_OPERATORS = driver.HARD_OPERATORS
REALISTIC_NOISE = SensorNoise(name="realistic", position_std_m=0.002, position_drift_m=0.001, yaw_std_rad=0.01,
                              yaw_drift_rad=0.005, stamp_jitter_ms=1.0)
NOISES = {"realistic": REALISTIC_NOISE}


def arm_episode(job: dict, rng: np.random.Generator) -> tuple[EpisodeLog, dict]:
    """One arm episode of `job` (see simulator.driver) as topics, with its ground-truth facts."""
    skill, ep_seed = job["skill"], job["seed"]
    ep = simulate_episode(operator_policy(job["operator"], skill, ep_seed), skill, ep_seed, job["steps"])
    facts = {"measure": SKILLS[skill]["measure"], "n_steps": ep.n_steps, "fell": False,
             "progress": round(ep.progress, 6), "env_return": round(ep.env_return, 6),
             "target_xy": [round(float(v), 6) for v in ep.target]}
    return build_log(ep, skill, job["start_ns"], rng, driver.camera_rng(job)), facts


SPEC = driver.FleetSpec(name="arm", skills=SKILLS, robots=ROBOTS, control_hz=CONTROL_HZ, episode_steps=EPISODE_STEPS,
                        episode=arm_episode, layouts=LAYOUTS, noises=NOISES)


simulate_fleet = driver.fleet_simulator(SPEC)
