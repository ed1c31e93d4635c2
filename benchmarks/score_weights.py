"""Fit the quality score's weights on simulated tuning fleets, and show how well they hold on a held-out seed.

The fleets (TUNING_FLEETS, every embodiment each) are simulated, ingested and validated once into
`--cache` (about 1.5 min a seed on one core); after that, a fit takes seconds: the components are
computed once per fleet (as the pipeline's `episode_scores` computes them: the nominal length from
the robot profile) and only their weighted means change. `pipeline_benchmark.py` refuses
these seeds, so the figures it reports come from fleets the weights never saw.

    python benchmarks/score_weights.py                 # fit, print the weights and per-fleet AUROCs
    python benchmarks/score_weights.py --held-out      # also refit without each seed and score it

The search: hill climbs on a 0.05 grid from random starting weights (Dirichlet), maximising the
mean plus half the minimum of the per-fleet AUROCs (expert and medium against every other operator),
so no fleet is given up for the others; the best climbs' weights, normalised, are averaged.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from pipeline_benchmark import TUNING_SEEDS, auroc

# seed -> (operator mix, sensor noise, episodes per embodiment)
TUNING_FLEETS = {5: ("default", None, 48), 7: ("default", None, 48), 101: ("hard", "realistic", 64),
                 202: ("hard", "realistic", 64), 303: ("hard", "realistic", 64), 404: ("hard", "realistic", 64)}
assert set(TUNING_FLEETS) == set(TUNING_SEEDS), "the benchmark must refuse exactly the seeds fitted on"
GOOD = ("expert", "medium")
STEP = 0.05


def fleet_components(cache: Path, embodiment: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(components matrix, good-operator mask) of one tuning fleet, simulating and caching it first."""
    import polars as pl

    from foundations.ingest import load_mapping
    from foundations.ingest.ingest import ingest_files
    from foundations.profile import load_profile
    from quality.scores import COMPONENTS, score_episodes
    from quality.validation import validate_episodes
    from simulator.embodiments import get_embodiment
    from simulator.fleet import read_ground_truth

    emb = get_embodiment(embodiment)
    operators, noise, n = TUNING_FLEETS[seed]
    table, truth = cache / f"{embodiment}_{seed}.parquet", cache / f"{embodiment}_{seed}.truth.parquet"
    if not truth.exists():
        sim = cache / "fleet" / f"{embodiment}_{seed}"
        if not (sim / "ground_truth.jsonl").exists():  # a fleet simulated before an interrupted ingest is kept
            emb.simulate_fleet(n, sim, seed=seed, operators=operators, **({"noise": noise} if noise else {}))
        mapping = load_mapping(emb.source)
        result = ingest_files(sorted(sim.rglob("*.mcap")), mapping, progress=False, batch_dir=sim)
        report = validate_episodes(result.episodes, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds)
        report.accepted.write_parquet(table)
        pl.DataFrame(read_ground_truth(sim)).select("sha256", "operator").write_parquet(truth)
    df = pl.read_parquet(table)
    profile, rate_hz = load_profile(emb.robot_profile), load_mapping(emb.source).control.rate_hz
    # The nominal length as the pipeline's episode_scores asset takes it (from the robot profile).
    nominal = round(profile.nominal_episode_s * rate_hz) if profile.nominal_episode_s else None
    scores = score_episodes(df, profile, nominal_steps=nominal).join(
        df.group_by("episode_id").agg(pl.col("source_sha256").first()), on="episode_id"
    ).join(pl.read_parquet(truth), left_on="source_sha256", right_on="sha256")
    return scores.select(COMPONENTS).to_numpy().astype(float), scores["operator"].is_in(GOOD).to_numpy()


def aurocs(weights: np.ndarray, fleets: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per-fleet AUROC of the weighted mean of the measured (non-null) components, as score_episodes takes it."""
    out = []
    for x, good in fleets:
        measured = ~np.isnan(x)
        score = np.where(measured, x, 0.0) @ weights / np.maximum(measured @ weights, 1e-12)
        out.append(auroc(score, good))
    return np.array(out)


def objective(weights: np.ndarray, fleets) -> float:
    a = aurocs(weights, fleets)
    return float(a.mean() + 0.5 * a.min())


def fit(fleets, starts: int = 12, keep: int = 4, seed: int = 1) -> np.ndarray:
    """Average of the `keep` best hill climbs from `starts` random weightings; sums to 1."""
    rng = np.random.default_rng(seed)
    climbs = []
    for _ in range(starts):
        w = np.round(rng.dirichlet(np.ones(fleets[0][0].shape[1])) * 2 / STEP) * STEP
        best, improved = objective(w, fleets), True
        while improved:
            improved = False
            for i in range(len(w)):
                for delta in (STEP, -STEP):
                    trial = w.copy()
                    trial[i] = round(trial[i] + delta, 3)
                    if trial[i] < 0 or trial.sum() <= 0:
                        continue
                    value = objective(trial, fleets)
                    if value > best + 1e-6:
                        best, w, improved = value, trial, True
        climbs.append((best, w / w.sum()))
    climbs.sort(key=lambda c: -c[0])
    return np.mean([w for _, w in climbs[:keep]], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "robocurate-score-fleets")
    parser.add_argument("--held-out", action="store_true", help="refit without each seed and score that seed")
    args = parser.parse_args()
    from quality.scores import COMPONENTS, DEFAULT_WEIGHTS
    from simulator.embodiments import EMBODIMENTS

    args.cache.mkdir(parents=True, exist_ok=True)
    names = [(e, s) for s in TUNING_FLEETS for e in EMBODIMENTS]
    fleets = [fleet_components(args.cache, e, s) for e, s in names]
    label = [f"{e}{s}" for e, s in names]

    def show(title: str, w: np.ndarray, which: list[int]) -> None:
        a = aurocs(w, [fleets[i] for i in which])
        print(f"{title:<28} mean {a.mean():.3f} min {a.min():.3f}  "
              + " ".join(f"{label[i]}={v:.3f}" for i, v in zip(which, a)))

    everything = list(range(len(fleets)))
    default = np.array([DEFAULT_WEIGHTS[c] for c in COMPONENTS])
    fitted = fit(fleets)
    print("fitted weights:", json.dumps({c: round(float(v), 3) for c, v in zip(COMPONENTS, fitted)}))
    show("DEFAULT_WEIGHTS", default, everything)
    show("fitted", fitted, everything)
    if args.held_out:
        for seed in TUNING_FLEETS:
            held = [i for i, (_, s) in enumerate(names) if s == seed]
            w = fit([f for i, f in enumerate(fleets) if i not in held])
            show(f"seed {seed}, fitted without it", w, held)
            show(f"seed {seed}, DEFAULT_WEIGHTS", default, held)


if __name__ == "__main__":
    main()
