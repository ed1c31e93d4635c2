"""Simulate a fleet of Ants whose operators log ROS 2 MCAP files, with ground truth beside them.

    from simulator.fleet import simulate_fleet
    truth = simulate_fleet(60, Path("landing/ant_fleet_ros2/batch-001"), seed=0)
    truth = simulate_fleet(60, Path("landing/site_b/batch-001"), seed=0, layout="second_site")

Every file holds one episode. `ground_truth.jsonl` (one object per file) records what the logs
do not say: the operator, the true progress, the planted fault (simulator.driver does the work
for every fleet).

Layouts (simulator.layout.SiteLayout; pass one, or a preset's name):
  default      the fleet's own: flat <robot>_<stamp>_<index>.mcap files, topics as in ant_log.py
  second_site  another site's recorder: base pose and twist as geometry_msgs/PoseStamped
               /ant_b/base/pose (25 Hz) and geometry_msgs/TwistStamped /ant_b/base/twist (25 Hz)
               instead of nav_msgs/Odometry, joints on /ant_b/joints (50 Hz, each robot's own joint
               order), commands on /ant_b/motor_cmd (20 Hz), instruction /ant_b/task, events
               /ant_b/episode, robot named in metadata record "site" key "robot_name", files in
               robot_<NN>/run_<k>.mcap; state streams start 20-150 ms after the first command and
               one stops 50-300 ms before the end.

Operator mixes: operators="hard" (HARD_OPERATORS) adds operators as smooth as the expert who do the
wrong skill, too little, wander, or pause (simulator.driver, simulator.operators).

Sensor noise (simulator.noise; off by default), noise="realistic" (REALISTIC_NOISE): /odom position
+-1 cm white noise and a drift of 3 cm per sqrt(s) in x and y, yaw +-0.01 rad and 0.01 rad per sqrt(s),
twist +-0.05 m/s and rad/s with a bias drifting 0.01 per sqrt(s); sensor stamps jittered by 1 ms.
"""
from __future__ import annotations

import numpy as np

from . import driver
from .ant_log import build_log
from .driver import GROUND_TRUTH, read_ground_truth
from .layout import SiteLayout
from .mcap_log import EpisodeLog
from .noise import SensorNoise
from .operators import operator_policy
from .rollout import simulate_episode
from .skills import CONTROL_HZ, EPISODE_STEPS, SKILLS

__all__ = ["DEFAULT_OPERATORS", "GROUND_TRUTH", "HARD_OPERATORS", "LAYOUTS", "NOISES", "REALISTIC_NOISE", "ROBOTS",
           "SECOND_SITE", "SPEC", "ant_episode", "read_ground_truth", "simulate_fleet"]

ROBOTS = tuple(f"ant-{i:02d}" for i in range(1, 7))
DEFAULT_OPERATORS = driver.DEFAULT_OPERATORS
HARD_OPERATORS = driver.HARD_OPERATORS
REALISTIC_NOISE = SensorNoise(name="realistic", position_std_m=0.01, position_drift_m=0.03, yaw_std_rad=0.01,
                              yaw_drift_rad=0.01, linear_std=0.05, angular_std=0.05, twist_drift=0.01,
                              stamp_jitter_ms=1.0)
NOISES = {"realistic": REALISTIC_NOISE}

SECOND_SITE = SiteLayout(
    name="second_site",
    odometry_as=("/ant_b/base/pose", "/ant_b/base/twist"),
    topics={"/joint_states": "/ant_b/joints", "/cmd_joint": "/ant_b/motor_cmd", "/instruction": "/ant_b/task",
            "/events": "/ant_b/episode"},
    rates_hz={"/ant_b/joints": 50, "/ant_b/base/pose": 25, "/ant_b/base/twist": 25},
    shuffle_joints=True,
    stream_start_s=(0.02, 0.15),
    stream_stop_s=(0.05, 0.3),
    files="per_robot",
    robot_metadata=("site", "robot_name"),
)
LAYOUTS = {"default": SiteLayout(), "second_site": SECOND_SITE}


def ant_episode(job: dict, rng: np.random.Generator) -> tuple[EpisodeLog, dict]:
    """One Ant episode of `job` (see simulator.driver) as topics, with its ground-truth facts."""
    skill, ep_seed = job["skill"], job["seed"]
    ep = simulate_episode(operator_policy(job["operator"], skill, ep_seed), skill, ep_seed, job["steps"])
    facts = {"measure": SKILLS[skill]["measure"], "n_steps": ep.n_steps, "fell": bool(ep.fell),
             "progress": round(ep.progress, 6), "env_return": round(ep.env_return, 6)}
    return build_log(ep, skill, job["start_ns"], rng, driver.camera_rng(job)), facts


SPEC = driver.FleetSpec(name="ant", skills=SKILLS, robots=ROBOTS, control_hz=CONTROL_HZ, episode_steps=EPISODE_STEPS,
                        episode=ant_episode, layouts=LAYOUTS, noises=NOISES)


simulate_fleet = driver.fleet_simulator(SPEC)
