"""How a site records its fleet's logs: topic names and types, rates, folders, joint order, stream timing.

The same simulated episodes can be written the way another site's recorder would, to test ingestion
of logs the pipeline's authors did not write. `SiteLayout()` is the fleet's own layout (nothing
changes); each field changes one thing, in this order:

  odometry_as     write the nav_msgs/Odometry topic as two topics, a geometry_msgs/PoseStamped
                  (first name) and a geometry_msgs/TwistStamped (second name), same stamps
  topics          rename topics: {fleet's name: site's name}
  rates_hz        {site's topic name: Hz}: subsample a sensor stream; the rate must divide the rate
                  the fleet logs it at (physics runs at 100 Hz, so nothing goes faster)
  shuffle_joints  JointState columns in an order of each robot's own (the `name` array says which);
                  one permutation per robot, the same in all its files
  stream_start_s  (low, high) seconds: each sensor stream's first message comes this much after the
                  episode's first state sample (uniform per stream and episode), so the first command
                  precedes every state message
  stream_stop_s   (low, high) seconds: one sensor stream (picked per episode) stops this much before the end
  files           "flat": <robot_id>_<UTC stamp>_<index>.mcap in the output folder; "per_robot":
                  robot_<NN>/run_<k>.mcap, k counting each robot's runs from 0, so names repeat across robots
  robot_metadata  (record, key) of the MCAP metadata record naming the robot

Ground truth records what was applied per file: `layout` (its name), `joint_order` (shuffle_joints),
`stream_start_s` and `stream_stop_s` ({topic: seconds}). Faults are planted after the layout, on
the site's topics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Mapping

import numpy as np

from .mcap_log import NS, EpisodeLog, Topic
from .ros_msgs import ODOMETRY, POSE_STAMPED, TWIST_STAMPED


@dataclass(frozen=True)
class SiteLayout:
    """A site's recording conventions (see the module docstring); the defaults change nothing."""

    name: str = "default"
    odometry_as: tuple[str, str] | None = None
    topics: Mapping[str, str] = field(default_factory=dict)
    rates_hz: Mapping[str, float] = field(default_factory=dict)
    shuffle_joints: bool = False
    stream_start_s: tuple[float, float] | None = None
    stream_stop_s: tuple[float, float] | None = None
    files: Literal["flat", "per_robot"] = "flat"
    robot_metadata: tuple[str, str] = ("robot", "robot_id")

    def __post_init__(self) -> None:
        if self.files not in ("flat", "per_robot"):
            raise ValueError(f"layout {self.name!r}: files must be 'flat' or 'per_robot', got {self.files!r}")
        bad = {k: v for k, v in self.rates_hz.items() if not v > 0}
        if bad:
            raise ValueError(f"layout {self.name!r}: rates_hz must be positive, got {bad}")
        for key in ("stream_start_s", "stream_stop_s"):
            span = getattr(self, key)
            if span is not None and not 0 <= span[0] <= span[1]:
                raise ValueError(f"layout {self.name!r}: {key} must be (low, high) with 0 <= low <= high, got {span}")
        if self.stream_start_s is not None and self.stream_start_s[0] < 0.005:
            raise ValueError(f"layout {self.name!r}: stream_start_s must start at 0.005 s or later, "
                             "so that the first command (2 ms after its sample) comes before every state")


def resolve(layout: SiteLayout | str | None, presets: Mapping[str, SiteLayout]) -> SiteLayout:
    """A layout object, or the preset of that name; None is the fleet's own layout."""
    if layout is None:
        return SiteLayout()
    if isinstance(layout, SiteLayout):
        return layout
    if layout not in presets:
        raise ValueError(f"unknown layout {layout!r}; known layouts: {', '.join(presets)} (or pass a SiteLayout)")
    return presets[layout]


def relative_paths(layout: SiteLayout, robots: list[str], robot_index: list[int], start_ns: np.ndarray) -> list[str]:
    """Each episode's file path relative to the output folder (POSIX), in episode order.

    `robot_index` is each episode's robot as a 1-based position in the fleet's robot list."""
    if layout.files == "flat":
        stamps = [datetime.fromtimestamp(int(s) / NS, tz=timezone.utc).strftime("%Y%m%dT%H%M%S") for s in start_ns]
        return [f"{r}_{s}_{i:05d}.mcap" for i, (r, s) in enumerate(zip(robots, stamps))]
    runs: dict[int, int] = {}
    paths = []
    for k in robot_index:
        paths.append(f"robot_{k:02d}/run_{runs.get(k, 0):05d}.mcap")
        runs[k] = runs.get(k, 0) + 1
    return paths


def _split_odometry(log: EpisodeLog, pose_name: str, twist_name: str) -> None:
    odom = [t for t in log.topics.values() if t.ros_type == ODOMETRY]
    if len(odom) != 1:
        raise ValueError(f"odometry_as needs exactly one nav_msgs/Odometry topic, the log has {len(odom)}")
    t = odom[0]
    p = t.payload
    pose = Topic(pose_name, POSE_STAMPED, t.stamp, t.publish, t.log,
                 {"position": p["position"], "orientation_wxyz": p["orientation_wxyz"]}, frame_id=t.frame_id)
    twist = Topic(twist_name, TWIST_STAMPED, t.stamp.copy(), t.publish.copy(), t.log.copy(),
                  {"linear": p["linear"], "angular": p["angular"]}, frame_id=t.child_frame_id)
    del log.topics[t.name]
    log.topics[pose_name], log.topics[twist_name] = pose, twist
    log.states = tuple(s for name in log.states for s in ((pose_name, twist_name) if name == t.name else (name,)))
    if log.pose == t.name:
        log.pose = pose_name


def _subsample(log: EpisodeLog, name: str, rate_hz: float) -> None:
    if name not in log.topics:
        raise ValueError(f"rates_hz names {name}, which this log does not have; topics: {sorted(log.topics)}")
    t = log.topics[name]
    period_ns = int(round(NS / rate_hz))
    spacing = int(np.min(np.diff(t.stamp))) if len(t) > 1 else period_ns
    if period_ns % spacing:
        raise ValueError(f"rates_hz[{name}] = {rate_hz} Hz does not divide the {NS / spacing:g} Hz the fleet "
                         f"logs it at; pick {NS / spacing:g} Hz divided by a whole number")
    t.keep((t.stamp - log.start_ns) % period_ns == 0)


def apply_layout(log: EpisodeLog, layout: SiteLayout, joint_order: np.ndarray | None,
                 rng: np.random.Generator) -> dict:
    """Rewrite `log` in place the way `layout`'s site records it; returns the ground-truth fields.

    `joint_order` is the robot's column permutation (used when layout.shuffle_joints)."""
    truth: dict = {"layout": layout.name}
    if layout.odometry_as is not None:
        _split_odometry(log, *layout.odometry_as)
    for old, new in layout.topics.items():
        if old not in log.topics:
            raise ValueError(f"layout {layout.name!r} renames {old}, which the log does not have; "
                             f"topics: {sorted(log.topics)}")
        log.rename(old, new)
    for name, rate in layout.rates_hz.items():
        _subsample(log, name, rate)
    if layout.shuffle_joints:
        js = log.topic(log.joints)
        js.payload = {k: v[:, joint_order] for k, v in js.payload.items()}
        js.joint_names = [js.joint_names[j] for j in joint_order]
        truth["joint_order"] = list(js.joint_names)
    if layout.stream_start_s is not None:
        delays = rng.uniform(*layout.stream_start_s, len(log.states))
        for name, delay in zip(log.states, delays):
            t = log.topic(name)
            t.keep(t.stamp >= log.start_ns + int(delay * NS))
        truth["stream_start_s"] = {n: round(float(d), 4) for n, d in zip(log.states, delays)}
    if layout.stream_stop_s is not None:
        name = log.states[int(rng.integers(len(log.states)))]
        early = float(rng.uniform(*layout.stream_stop_s))
        t = log.topic(name)
        t.keep(t.stamp <= log.end_ns - int(early * NS))
        truth["stream_stop_s"] = {name: round(early, 4)}
    return truth
