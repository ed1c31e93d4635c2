"""The fleet driver every embodiment shares: plan a fleet's episodes, simulate them (in parallel if
asked), lay the logs out as a site records them, plant faults, write MCAP files and ground truth.

An embodiment supplies a `FleetSpec`: its skills, robots, rates, site layout presets, and a
module-level `episode(job, rng) -> (EpisodeLog, truth fields)` that simulates one episode and
lays it out as topics. Everything else (operator mix, start times, file names, faults, the
ground-truth file) is decided here, once for every fleet.

`ground_truth.jsonl` (one object per file) records what the logs do not say: the operator, the
true progress, the planted fault, the sensor noise (when there is any). The pipeline never reads it;
tests and benchmarks do.

Operator mixes (`operators=`, a name -> share mapping or a preset's name, OPERATOR_MIXES):
  default  expert 30 %, medium 25 %, poor 25 %, random 20 %: every bad operator is also a jerky one
  hard     expert 25 %, medium 20 %, poor and random 7.5 % each, and 10 % each of the hard operators
           (smooth_wrong_skill, smooth_weak, smooth_random, hesitant; see simulator.operators), who
           move as smoothly as the expert
Sensor noise (`noise=`, a simulator.noise.SensorNoise or a preset's name of the embodiment, e.g.
"realistic"; off by default) is described in simulator/noise.py.
Camera (`camera=True`, the default): each fleet logs a small camera topic rendered by MuJoCo
(simulator.camera); `camera=False` leaves it out (as does a machine without an OpenGL backend, with a
warning). `camera_fault_rate` (default 0) plants a frozen or black camera (CAMERA_FAULT_KINDS, taken in
turn) in that share of the episodes that have no other fault; ground truth records it as
`camera_fault` and `camera_fault_detail` (null when none).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from tqdm import tqdm

from foundations.storage import sha256_file

from .camera import CAMERA_SEED
from .faults import CAMERA_FAULT_KINDS, FAULT_KINDS, effective_kind, plant_camera_fault, plant_in_log, truncate_file
from .layout import SiteLayout, apply_layout, relative_paths, resolve
from .mcap_log import NS, EpisodeLog, write_mcap
from .noise import NOISE_SEED, SensorNoise, jitter_stamps, perturb_pose, resolve_noise

GROUND_TRUTH = "ground_truth.jsonl"
HARD_OPERATOR_NAMES = ("smooth_wrong_skill", "smooth_weak", "smooth_random", "hesitant")
OPERATOR_NAMES = ("expert", "medium", "poor", "random", *HARD_OPERATOR_NAMES)
DEFAULT_OPERATORS = {"expert": 0.30, "medium": 0.25, "poor": 0.25, "random": 0.20}
HARD_OPERATORS = {"expert": 0.25, "medium": 0.20, "poor": 0.075, "random": 0.075,
                  **{name: 0.10 for name in HARD_OPERATOR_NAMES}}
OPERATOR_MIXES = {"default": DEFAULT_OPERATORS, "hard": HARD_OPERATORS}
BASE_DATE = datetime(2025, 6, 1, tzinfo=timezone.utc)  # the seed moves it by whole days
MIN_GAP_S = 20.0  # between episode starts


@dataclass(frozen=True)
class FleetSpec:
    """What a fleet generator needs from an embodiment."""

    name: str
    skills: Mapping[str, Mapping[str, Any]]  # instruction -> {"measure", "target"}
    robots: tuple[str, ...]
    control_hz: int
    episode_steps: int  # default episode length in control steps
    episode: Callable[[dict, np.random.Generator], tuple[EpisodeLog, dict]]  # module level (pickled by name)
    layouts: Mapping[str, SiteLayout]  # presets by name
    noises: Mapping[str, SensorNoise] = field(default_factory=dict)  # sensor noise presets by name


def stratified(weights: Mapping[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """`n` labels in proportion to `weights` (largest remainders), shuffled."""
    names = list(weights)
    share = np.array([weights[k] for k in names], dtype=float)
    share = share / share.sum() * n
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts))[: n - counts.sum()]] += 1
    labels = np.repeat(np.array(names, dtype=object), counts)
    return [str(x) for x in rng.permutation(labels)]


def check_args(n_episodes: int, fault_rate: float, episode_steps: int, operators: Mapping[str, float]) -> None:
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must lie in [0, 1], got {fault_rate}")
    if episode_steps < 1:
        raise ValueError(f"episode_steps must be >= 1, got {episode_steps}")
    unknown = set(operators) - set(OPERATOR_NAMES)
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}; known operators: {list(OPERATOR_NAMES)}")
    if any(w < 0 for w in operators.values()) or sum(operators.values()) <= 0:
        raise ValueError(f"operator weights must be >= 0 with a positive sum, got {dict(operators)}")


def start_times(n: int, episode_s: float, base_ns: int, rng: np.random.Generator) -> np.ndarray:
    """Episode start times (ns) spread over the day (or longer, for big fleets) before
    `base_ns`, never overlapping and at least MIN_GAP_S apart."""
    gap = max(MIN_GAP_S, episode_s + 5.0)
    span = max(86_400.0, n * gap * 1.5)
    slack = span - n * gap
    shares = rng.random(n + 1)
    offsets = np.cumsum(gap + slack * shares[:n] / shares.sum())
    return base_ns - int(span * NS) + (offsets * NS).astype(np.int64)


def operator_mix(operators: Mapping[str, float] | str | None) -> dict[str, float]:
    """Operator shares: the mapping itself, or the mix of that name (None is the default mix)."""
    if operators is None:
        return dict(DEFAULT_OPERATORS)
    if isinstance(operators, str):
        if operators not in OPERATOR_MIXES:
            raise ValueError(f"unknown operator mix {operators!r}; known mixes: {', '.join(OPERATOR_MIXES)} "
                             "(or pass {operator: share})")
        return dict(OPERATOR_MIXES[operators])
    return dict(operators)


def camera_rng(job: dict) -> np.random.Generator | None:
    """The camera's own random stream for a job (None when the job logs no camera): the other topics,
    the layout and the faults draw from theirs exactly as they would without a camera."""
    return np.random.default_rng([job["seed"], CAMERA_SEED]) if job.get("camera", True) else None


def simulate(spec: FleetSpec, n_episodes: int, out_dir: Path, seed: int = 0, fault_rate: float = 0.15,
             episode_steps: int | None = None, operators: Mapping[str, float] | str | None = None, workers: int = 1,
             layout: SiteLayout | str | None = None, noise: SensorNoise | str | None = None,
             camera: bool = True, camera_fault_rate: float = 0.0) -> Path:
    """Simulate `n_episodes` episodes of `spec`'s fleet into `out_dir` (one MCAP file each);
    returns the ground-truth JSONL path.

    Skills are evenly mixed; operators follow `operators` (name -> share, or a mix's name: "default",
    expert 30 %, medium 25 %, poor 25 %, random 20 %; "hard", see the module docstring);
    round(fault_rate * n_episodes) files get one planted fault each, the kinds taken in turn.
    `layout` (a SiteLayout or a preset's name) says how the site records the logs; `noise` (a
    SensorNoise or a preset's name, default none) how noisy its sensors are. `camera` logs the fleet's
    camera; `camera_fault_rate` plants camera faults (module docstring). The same arguments give
    byte-identical files, whatever `workers` is.
    """
    episode_steps = spec.episode_steps if episode_steps is None else int(episode_steps)
    operators = operator_mix(operators)
    check_args(n_episodes, fault_rate, episode_steps, operators)
    site = resolve(layout, spec.layouts)
    sensor_noise = resolve_noise(noise, spec.noises)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    skills = [str(s) for s in rng.permutation(np.resize(np.array(list(spec.skills), dtype=object), n_episodes))]
    who = stratified(operators, n_episodes, rng)
    robot_pos = rng.integers(0, len(spec.robots), size=n_episodes)
    robots = [spec.robots[k] for k in robot_pos]
    episode_seeds = np.random.SeedSequence(seed).generate_state(n_episodes).tolist()
    faults: list[str | None] = [None] * n_episodes
    n_faulty = int(round(fault_rate * n_episodes))
    kinds = rng.permutation(np.resize(np.array(FAULT_KINDS, dtype=object), n_faulty)) if n_faulty else []
    for i, kind in zip(rng.choice(n_episodes, size=n_faulty, replace=False), kinds):
        faults[int(i)] = str(kind)
    camera_faults = _camera_faults(faults, camera_fault_rate if camera else 0.0, seed)
    base_ns = int((BASE_DATE.timestamp() + 86_400 * (seed % 1000)) * NS)
    starts = start_times(n_episodes, episode_steps / spec.control_hz, base_ns, rng)
    paths = relative_paths(site, robots, [int(k) + 1 for k in robot_pos], starts)
    # Each robot's own joint order (used by layouts that shuffle joints), fixed by the seed.
    orders = [np.random.default_rng([seed, 0x0DE5, k]).permutation(64).tolist() for k in range(len(spec.robots))]

    jobs = [
        {"i": i, "out_dir": str(out_dir), "file": paths[i], "seed": int(episode_seeds[i]), "skill": skills[i],
         "operator": who[i], "robot_id": robots[i], "joint_order": orders[int(robot_pos[i])], "fault": faults[i],
         "start_ns": int(starts[i]), "steps": episode_steps, "layout": site, "noise": sensor_noise,
         "camera": camera, "camera_fault": camera_faults[i]}
        for i in range(n_episodes)
    ]
    records: list[dict] = [{}] * n_episodes
    bar = dict(total=n_episodes, desc=f"simulating {spec.name} fleet", unit="episode")
    if workers <= 1:
        for job in tqdm(jobs, **bar):
            records[job["i"]] = run_job(spec.episode, job)
    else:
        # Each episode depends only on its own job, so the files match a serial run byte for byte.
        # spawn, not fork: a GL context (the camera's renderer) does not survive a fork.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_job, spec.episode, job) for job in jobs]
            for fut in tqdm(as_completed(futures), **bar):
                rec = fut.result()
                records[rec["episode_index"]] = rec

    truth_path = out_dir / GROUND_TRUTH
    tmp_truth = out_dir / f".{GROUND_TRUTH}.tmp"
    tmp_truth.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp_truth, truth_path)
    return truth_path


def _camera_faults(faults: list[str | None], rate: float, seed: int) -> list[str | None]:
    """Camera faults for episodes without another fault (their own random stream: the others stay put)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"camera_fault_rate must lie in [0, 1], got {rate}")
    free = [i for i, f in enumerate(faults) if f is None]
    n = min(len(free), int(round(rate * len(faults))))
    out: list[str | None] = [None] * len(faults)
    rng = np.random.default_rng([seed, CAMERA_SEED])
    for k, i in enumerate(sorted(rng.choice(free, size=n, replace=False).tolist()) if n else []):
        out[i] = CAMERA_FAULT_KINDS[k % len(CAMERA_FAULT_KINDS)]
    return out


def fleet_simulator(spec: FleetSpec) -> Callable[..., Path]:
    """`simulate_fleet` of one embodiment: `simulate` with `spec` bound (see there for the arguments)."""

    def simulate_fleet(n_episodes: int, out_dir: Path, seed: int = 0, fault_rate: float = 0.15,
                       episode_steps: int | None = None, operators: Mapping[str, float] | str | None = None,
                       workers: int = 1, layout: SiteLayout | str | None = None,
                       noise: SensorNoise | str | None = None, camera: bool = True,
                       camera_fault_rate: float = 0.0) -> Path:
        return simulate(spec, n_episodes, out_dir, seed, fault_rate, episode_steps, operators, workers, layout, noise,
                        camera, camera_fault_rate)

    simulate_fleet.__doc__ = (
        f"Simulate `n_episodes` {spec.name} episodes (default {spec.episode_steps} control steps at "
        f"{spec.control_hz} Hz) into `out_dir`; returns the ground-truth JSONL path. Operator mixes: "
        f"{', '.join(OPERATOR_MIXES)}. Layout presets: {', '.join(spec.layouts)}. Sensor noise presets: none, "
        f"{', '.join(spec.noises)}. See simulator.driver.simulate."
    )
    return simulate_fleet


def run_job(episode: Callable[[dict, np.random.Generator], tuple[EpisodeLog, dict]], job: dict) -> dict:
    """Simulate, lay out, (maybe) damage and write one episode; returns its ground-truth record."""
    ep_rng = np.random.default_rng([job["seed"], 0x10C])  # timing jitter, layout and fault placement
    log, facts = episode(job, ep_rng)
    site: SiteLayout = job["layout"]
    noise: SensorNoise = job["noise"]
    if noise.active:  # its own random stream: layouts and faults land as they would without noise
        noise_rng = np.random.default_rng([job["seed"], NOISE_SEED])
        facts = {**facts, "sensor_noise": perturb_pose(log, noise, noise_rng)}
    n_joints = len(log.topic(log.joints).joint_names or [])
    order = np.array([j for j in job["joint_order"] if j < n_joints])
    placed = apply_layout(log, site, order, ep_rng)
    if noise.active:
        jitter_stamps(log, noise, noise_rng)
    fault = job["fault"] and effective_kind(job["fault"], (log.end_ns - log.start_ns) / NS)
    detail = plant_in_log(log, fault, ep_rng) if fault not in (None, "truncated") else None
    camera_fault = job.get("camera_fault") if log.camera else None
    camera_detail = plant_camera_fault(log, camera_fault, np.random.default_rng([job["seed"], CAMERA_SEED, 1])) \
        if camera_fault else None

    out_dir, rel = Path(job["out_dir"]), job["file"]
    final = out_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    record, key = site.robot_metadata
    write_mcap(log, tmp, {record: {key: job["robot_id"]}})
    if fault == "truncated":
        detail = truncate_file(tmp, ep_rng)
    os.replace(tmp, final)  # a watcher never sees a half-written file
    return {
        "file": rel,
        "sha256": sha256_file(final),
        "episode_index": job["i"],
        "episode_in_file": 0,
        "robot_id": job["robot_id"],
        "operator": job["operator"],
        "skill": job["skill"],
        "instruction": job["skill"],
        **facts,  # measure, n_steps, fell, progress, env_return, and the embodiment's own facts
        "fault": fault,
        "fault_detail": detail,
        "camera_fault": camera_fault,
        "camera_fault_detail": camera_detail,
        "seed": job["seed"],
        "start_time_ns": job["start_ns"],
        **placed,
    }


def read_ground_truth(path: Path) -> list[dict]:
    """The records of a ground-truth file (or of `<folder>/ground_truth.jsonl`)."""
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
