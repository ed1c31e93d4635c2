"""Tune each skill's CPG once by random search and write cpg_params.yaml.

    python -m simulator.tune [--iterations 40] [--seed 0]

A broad random sample of gaits picks a start, then augmented random search
(Mania et al. 2018: antithetic perturbations, top directions, reward-scaled steps)
climbs the skill's signed progress in 10 s episodes from random reset states, up to
a controlled pace (PACE_CAP times the skill's target); falls, tipping over and torque
effort are penalised. Run it once and commit the file; the fleet only loads it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from .cpg import BOUNDS, PARAMS_FILE, Gait
from .rollout import simulate_episode
from .skills import CONTROL_HZ, EPISODE_STEPS, SKILLS

FALL_PENALTY = 2.0  # per fall (Ant-v5 unhealthy termination)
FLIP_PENALTY = 2.0  # torso tilted past 60 degrees: Ant-v5 still calls that healthy, a curator would not
EFFORT_WEIGHT = 0.1  # per unit of mean squared torque summed over the 8 joints (at most 8)
# Progress counts up to this multiple of the skill's target (source mapping): an expert
# walks and turns at a controlled pace, and past it the search buys smoothness instead.
PACE_CAP = 1.5


class GaitPolicy:
    """A bare gait (no operator noise) as a policy, starting at phase `start_s`."""

    def __init__(self, gait: Gait, start_s: float = 0.0):
        self.gait, self.t = gait, start_s

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action = self.gait.action(self.t, obs)
        self.t += 1.0 / CONTROL_HZ
        return action


def upright(qpos: np.ndarray) -> np.ndarray:
    """World-z component of the torso's z axis at each sample (1 = level, < 0 = upside down)."""
    x, y = qpos[:, 4], qpos[:, 5]
    return 1.0 - 2.0 * (x * x + y * y)


def score(skill: str, gait: Gait, seeds: list[int], steps: int = EPISODE_STEPS) -> float:
    """Mean progress toward the skill's target (capped at PACE_CAP times it), minus
    penalties for falls, tipping over and torque effort (smooth gaits are what a good
    operator produces)."""
    sign = np.sign(SKILLS[skill]["target"])
    cap = PACE_CAP * abs(SKILLS[skill]["target"])
    total = 0.0
    for s in seeds:
        ep = simulate_episode(GaitPolicy(gait, start_s=(s % 7) / 7.0 / gait.freq_hz), skill, s, steps)
        total += (
            min(sign * ep.progress, cap)
            - (FALL_PENALTY if ep.fell else 0.0)
            - (FLIP_PENALTY if upright(ep.qpos).min() < 0.5 else 0.0)
            - EFFORT_WEIGHT * float((ep.actions**2).sum(1).mean())
        )
    return total / len(seeds)


def tune_skill(skill: str, rng: np.random.Generator, n_init: int, iterations: int, directions: int,
               top: int, step_size: float, noise: float) -> tuple[Gait, list[float]]:
    """Random sample of `n_init` gaits, then `iterations` ARS updates; returns the best gait seen."""
    dim = sum(n for _, _, n in BOUNDS.values())
    seed_base = int(rng.integers(1 << 30))
    candidates = rng.random((n_init, dim))
    scores = [score(skill, Gait.from_vector(c), [seed_base + i]) for i, c in enumerate(candidates)]
    theta = candidates[int(np.argmax(scores))].copy()
    best_theta, best_score, history = theta.copy(), -np.inf, []
    for it in range(iterations):
        seed = seed_base + 10_000 + it
        deltas = rng.normal(size=(directions, dim))
        seeds = [seed, seed + 300_000]
        plus = np.array([score(skill, Gait.from_vector(theta + noise * d), seeds) for d in deltas])
        minus = np.array([score(skill, Gait.from_vector(theta - noise * d), seeds) for d in deltas])
        order = np.argsort(-np.maximum(plus, minus))[:top]
        spread = np.concatenate([plus[order], minus[order]]).std() + 1e-6
        theta = theta + step_size / (top * spread) * ((plus[order] - minus[order])[:, None] * deltas[order]).sum(0)
        theta = Gait.from_vector(theta).to_vector()  # back into the box
        current = score(skill, Gait.from_vector(theta), [seed + 500_000, seed + 600_000])
        history.append(current)
        if current > best_score:
            best_theta, best_score = theta.copy(), current
        print(f"{skill:12s} it {it:3d} progress {current:+.3f} best {best_score:+.3f}", flush=True)
    return Gait.from_vector(best_theta), history


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=int, default=40, help="random gaits sampled before climbing")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--directions", type=int, default=6)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--step-size", type=float, default=0.02)
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--skills", nargs="*", default=list(SKILLS))
    ap.add_argument("--out", type=Path, default=PARAMS_FILE)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    doc = yaml.safe_load(args.out.read_text()) if args.out.exists() else {"gaits": {}, "tuning": {}}
    for skill in args.skills:
        t0 = time.perf_counter()
        gait, _ = tune_skill(skill, rng, args.init, args.iterations, args.directions, args.top,
                             args.step_size, args.noise)
        # Honest check on reset states the search never saw: raw signed progress and falls.
        eps = [simulate_episode(GaitPolicy(gait, start_s=0.1 * i), skill, 900_000 + i) for i in range(5)]
        held_out = np.array([ep.progress for ep in eps])
        doc["gaits"][skill] = gait.to_dict()
        doc["tuning"][skill] = {
            "seed": args.seed, "init": args.init, "iterations": args.iterations, "pace_cap": PACE_CAP,
            "held_out_progress_mean": round(float(held_out.mean()), 4),
            "held_out_progress_min": round(float(held_out.min()), 4),
            "held_out_progress_max": round(float(held_out.max()), 4),
            "held_out_falls": int(sum(ep.fell for ep in eps)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{skill}: held-out progress {held_out.mean():+.3f} "
              f"(min {held_out.min():+.3f}, max {held_out.max():+.3f})", flush=True)
        args.out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return args.out


if __name__ == "__main__":
    main()
