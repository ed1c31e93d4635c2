"""Faults planted in some logs, one per faulty file, so the pipeline's checks have work.

nan          NaN in a few joint positions (the log's JointState topic) for 0.12-0.3 s mid-episode
             (a glitching encoder; long enough to span at least two 20 Hz control steps, so it
             reaches the episode table)
dropped      every sensor stream (the log's `states`) silent for more than 0.5 s mid-episode
time_jump    every topic's clock jumps forward by several seconds mid-episode
truncated    the written file is cut to a fraction of its bytes (as by a full disk or a crash)
wrong_topic  the JointState topic recorded under a misspelt name (its last letter dropped:
             /joint_states becomes /joint_state)

Camera faults (planted only when asked, simulator.driver `camera_fault_rate`, in episodes without another fault):
camera_frozen  the camera driver hangs: from 30-60 % of the episode on, it republishes its last frame
camera_black   the sensor goes dark (a covered lens, a dead sensor): from 30-60 % on, frames are black noise

Faults find their topics by role (EpisodeLog.joints, .states), so they work for every fleet and
site layout. Falls are not faults: they are real outcomes of the physics.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .camera import black_like
from .mcap_log import NS, EpisodeLog

FAULT_KINDS = ("nan", "dropped", "time_jump", "truncated", "wrong_topic")
CAMERA_FAULT_KINDS = ("camera_frozen", "camera_black")
# Faults placed inside the episode need room around them; shorter episodes (early
# falls) get a truncation instead.
MIN_SECONDS_FOR_MID_EPISODE = 2.0


def check_fault(kind: str | None) -> str | None:
    if kind is not None and kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r}; known faults: {list(FAULT_KINDS)}")
    return kind


def effective_kind(kind: str, duration_s: float) -> str:
    """The fault that fits an episode of this length (see MIN_SECONDS_FOR_MID_EPISODE)."""
    if kind in ("nan", "dropped", "time_jump") and duration_s < MIN_SECONDS_FOR_MID_EPISODE:
        return "truncated"
    return kind


def plant_in_log(log: EpisodeLog, kind: str, rng: np.random.Generator) -> str:
    """Apply a message-level fault to `log` in place; returns a readable description.

    `truncated` is planted on the written file by `truncate_file` instead.
    """
    duration = (log.end_ns - log.start_ns) / NS
    at_s = float(rng.uniform(0.3, 0.6) * duration)
    at_ns = log.start_ns + int(at_s * NS)
    if kind == "nan":
        js = log.topic(log.joints)
        first = int(np.searchsorted(js.stamp, at_ns))
        # 12-30 samples' worth at 100 Hz (0.12-0.3 s), whatever the topic's rate.
        until_ns = int(js.stamp[first]) + int(rng.integers(12, 31)) * NS // 100
        rows = np.arange(first, int(np.searchsorted(js.stamp, until_ns)))
        n_joints = js.payload["position"].shape[1]
        joints = rng.choice(n_joints, size=int(rng.integers(1, min(3, n_joints - 1) + 1)), replace=False)
        js.payload["position"][np.ix_(rows, joints)] = np.nan
        return f"NaN in {log.joints} position[{sorted(joints.tolist())}] for {len(rows)} messages from {at_s:.2f} s"
    if kind == "dropped":
        gap_s = float(min(rng.uniform(0.6, 1.5), 0.35 * duration))
        end_ns = at_ns + int(gap_s * NS)
        for name in log.states:
            t = log.topic(name)
            t.keep((t.stamp < at_ns) | (t.stamp >= end_ns))
        return f"{' and '.join(log.states)} dropped for {gap_s:.2f} s from {at_s:.2f} s"
    if kind == "time_jump":
        jump_ns = int(rng.uniform(3.0, 8.0) * NS)
        for t in log.topics.values():
            t.shift(at_ns, jump_ns)
        return f"clock jumps forward {jump_ns / NS:.2f} s at {at_s:.2f} s on all topics"
    if kind == "wrong_topic":
        right = log.joints
        log.rename(right, right[:-1])
        return f"{right} recorded as {right[:-1]}"
    raise ValueError(f"fault {kind!r} is not planted in messages")


def plant_camera_fault(log: EpisodeLog, kind: str, rng: np.random.Generator) -> str:
    """A frozen or black camera (CAMERA_FAULT_KINDS) on `log.camera`, in place; returns a readable description."""
    cam = log.topic(log.camera or "")
    frames = cam.payload["data"]
    first = int(rng.uniform(0.3, 0.6) * len(frames))
    at_s = (int(cam.stamp[first]) - log.start_ns) / NS
    if kind == "camera_frozen":
        frames[first:] = [frames[first]] * (len(frames) - first)
        return f"{log.camera} repeats the frame of {at_s:.2f} s for its last {len(frames) - first} frames"
    if kind == "camera_black":
        frames[first:] = [black_like(frames[0], rng) for _ in range(len(frames) - first)]
        return f"{log.camera} black from {at_s:.2f} s ({len(frames) - first} frames)"
    raise ValueError(f"unknown camera fault {kind!r}; known: {list(CAMERA_FAULT_KINDS)}")


def truncate_file(path: Path, rng: np.random.Generator) -> str:
    """Cut the file to 30-80 % of its bytes; returns a readable description."""
    size = os.path.getsize(path)
    keep = int(size * rng.uniform(0.3, 0.8))
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return f"file cut to {keep} of {size} bytes"
