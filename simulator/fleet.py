"""Simulate a fleet of Ants whose operators log ROS 2 MCAP files, with ground truth beside them.

    from simulator.fleet import simulate_fleet
    truth = simulate_fleet(60, Path("landing/batch-001"), seed=0)

Every file holds one episode. `ground_truth.jsonl` (one object per file) records what
the logs do not say: the operator, the true progress, the planted fault. The pipeline
never reads it; tests and benchmarks do.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from foundations.storage import sha256_file

from .faults import FAULT_KINDS, effective_kind, plant_in_log, truncate_file
from .mcap_log import NS, build_log, write_mcap
from .operators import OPERATORS, operator_policy
from .rollout import simulate_episode
from .skills import CONTROL_HZ, EPISODE_STEPS, SKILLS

DEFAULT_OPERATORS = {"expert": 0.30, "medium": 0.25, "poor": 0.25, "random": 0.20}
ROBOTS = [f"ant-{i:02d}" for i in range(1, 7)]
BASE_DATE = datetime(2025, 6, 1, tzinfo=timezone.utc)  # the seed moves it by whole days
GROUND_TRUTH = "ground_truth.jsonl"
MIN_GAP_S = 20.0  # between episode starts (an episode lasts 10 s by default)


def _stratified(weights: dict[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """`n` labels in proportion to `weights` (largest remainders), shuffled."""
    names = list(weights)
    share = np.array([weights[k] for k in names], dtype=float)
    share = share / share.sum() * n
    counts = np.floor(share).astype(int)
    counts[np.argsort(-(share - counts))[: n - counts.sum()]] += 1
    labels = np.repeat(np.array(names, dtype=object), counts)
    return [str(x) for x in rng.permutation(labels)]


def _check_args(n_episodes: int, fault_rate: float, episode_steps: int, operators: dict[str, float]) -> None:
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if not 0.0 <= fault_rate <= 1.0:
        raise ValueError(f"fault_rate must lie in [0, 1], got {fault_rate}")
    if episode_steps < 1:
        raise ValueError(f"episode_steps must be >= 1, got {episode_steps}")
    unknown = set(operators) - set(OPERATORS)
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}; known operators: {list(OPERATORS)}")
    if any(w < 0 for w in operators.values()) or sum(operators.values()) <= 0:
        raise ValueError(f"operator weights must be >= 0 with a positive sum, got {operators}")


def _start_times(n: int, episode_s: float, base_ns: int, rng: np.random.Generator) -> np.ndarray:
    """Episode start times (ns) spread over the day (or longer, for big fleets) before
    `base_ns`, never overlapping and at least MIN_GAP_S apart."""
    gap = max(MIN_GAP_S, episode_s + 5.0)
    span = max(86_400.0, n * gap * 1.5)
    slack = span - n * gap
    shares = rng.random(n + 1)
    offsets = np.cumsum(gap + slack * shares[:n] / shares.sum())
    return base_ns - int(span * NS) + (offsets * NS).astype(np.int64)


def simulate_fleet(
    n_episodes: int,
    out_dir: Path,
    seed: int = 0,
    fault_rate: float = 0.15,
    episode_steps: int = EPISODE_STEPS,
    operators: dict[str, float] | None = None,
    workers: int = 1,
) -> Path:
    """Simulate `n_episodes` episodes into `out_dir` (one MCAP file each); returns the
    ground-truth JSONL path.

    Skills are evenly mixed; operators follow `operators` (name -> share, default
    expert 30 %, medium 25 %, poor 25 %, random 20 %); round(fault_rate * n_episodes)
    files get one planted fault each, the kinds taken in turn. The same arguments give
    byte-identical files, whatever `workers` (processes) is.
    """
    operators = dict(DEFAULT_OPERATORS if operators is None else operators)
    _check_args(n_episodes, fault_rate, episode_steps, operators)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    skills = [str(s) for s in rng.permutation(np.resize(np.array(list(SKILLS), dtype=object), n_episodes))]
    who = _stratified(operators, n_episodes, rng)
    robots = rng.choice(ROBOTS, size=n_episodes)
    episode_seeds = np.random.SeedSequence(seed).generate_state(n_episodes).tolist()
    faults: list[str | None] = [None] * n_episodes
    n_faulty = int(round(fault_rate * n_episodes))
    kinds = rng.permutation(np.resize(np.array(FAULT_KINDS, dtype=object), n_faulty)) if n_faulty else []
    for i, kind in zip(rng.choice(n_episodes, size=n_faulty, replace=False), kinds):
        faults[int(i)] = str(kind)
    base_ns = int((BASE_DATE.timestamp() + 86_400 * (seed % 1000)) * NS)
    starts = _start_times(n_episodes, episode_steps / CONTROL_HZ, base_ns, rng)

    jobs = [
        {"i": i, "out_dir": str(out_dir), "seed": int(episode_seeds[i]), "skill": skills[i], "operator": who[i],
         "robot_id": str(robots[i]), "fault": faults[i], "start_ns": int(starts[i]), "steps": episode_steps}
        for i in range(n_episodes)
    ]
    records: list[dict] = [{}] * n_episodes
    bar = dict(total=n_episodes, desc="simulating fleet", unit="episode")
    if workers <= 1:
        for job in tqdm(jobs, **bar):
            records[job["i"]] = _simulate_one(job)
    else:
        # Each episode depends only on its own job, so the files match a serial run byte for byte.
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_simulate_one, job) for job in jobs]
            for fut in tqdm(as_completed(futures), **bar):
                rec = fut.result()
                records[rec["episode_index"]] = rec

    truth_path = out_dir / GROUND_TRUTH
    tmp_truth = out_dir / f".{GROUND_TRUTH}.tmp"
    tmp_truth.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp_truth, truth_path)
    return truth_path


def _simulate_one(job: dict) -> dict:
    """Simulate, log and (maybe) damage one episode; returns its ground-truth record."""
    i, ep_seed, skill, operator = job["i"], job["seed"], job["skill"], job["operator"]
    out_dir, robot_id, start_ns = Path(job["out_dir"]), job["robot_id"], job["start_ns"]
    ep = simulate_episode(operator_policy(operator, skill, ep_seed), skill, ep_seed, job["steps"])
    ep_rng = np.random.default_rng([ep_seed, 0x10C])  # timing jitter and fault placement
    log = build_log(ep, skill, start_ns, ep_rng)
    fault = job["fault"] and effective_kind(job["fault"], (log.end_ns - log.start_ns) / NS)
    detail = plant_in_log(log, fault, ep_rng) if fault not in (None, "truncated") else None

    stamp = datetime.fromtimestamp(start_ns / NS, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    name = f"{robot_id}_{stamp}_{i:05d}.mcap"
    tmp = out_dir / f".{name}.tmp"
    write_mcap(log, tmp, robot_id)
    if fault == "truncated":
        detail = truncate_file(tmp, ep_rng)
    os.replace(tmp, out_dir / name)  # a watcher never sees a half-written file
    return {
        "file": name,
        "sha256": sha256_file(out_dir / name),
        "episode_index": i,
        "episode_in_file": 0,
        "robot_id": robot_id,
        "operator": operator,
        "skill": skill,
        "instruction": skill,
        "measure": SKILLS[skill]["measure"],
        "n_steps": ep.n_steps,
        "fell": bool(ep.fell),
        "progress": round(ep.progress, 6),
        "env_return": round(ep.env_return, 6),
        "fault": fault,
        "fault_detail": detail,
        "seed": ep_seed,
        "start_time_ns": start_ns,
    }


def read_ground_truth(path: Path) -> list[dict]:
    """The records of a ground-truth file (or of `<folder>/ground_truth.jsonl`)."""
    path = Path(path)
    if path.is_dir():
        path = path / GROUND_TRUTH
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
