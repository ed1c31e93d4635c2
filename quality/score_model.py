"""The quality score's default combiner: boosted trees over the named components, monotone in each.

`quality.scores` turns an episode into named components in [0, 1]; this module turns them into one
number: the estimated probability that a competent operator (expert or medium) produced the episode.
The trees were fitted by `benchmarks/fit_score.py` (scikit-learn's HistGradientBoostingClassifier)
on simulated tuning fleets of every embodiment, which the pipeline benchmark refuses to report, and
are stored as plain arrays in `score_model.json`; they are evaluated here with numpy, so scoring
needs no scikit-learn and gives the same bits on every run.

Why trees and not a weighted mean: an episode is only as good as its weakest aspect, and how much
one component matters depends on the others (a short pause costs little in an episode that reached
its target, much in one that did not). Every tree is monotone increasing in every component, so
raising a component never lowers a score: the model weighs and combines the components, but cannot
learn that jerky or idle is good from a simulator's quirk. A component's scale is a calibration that
another robot bends, so the fit also saw copies of every fleet with each component raised to a random
power; without them the trees learnt sharp thresholds of the simulated fleets. Fitted with each tuning
seed left out, the trees separated the legged fleets' operators better than the weighted mean and the
arm's about as well (the fit script's docstring has the figures). A component that is null (not
measurable for this episode) follows the branch the fit chose for missing values.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MODEL_PATH", "ScoreModel", "load_score_model"]

MODEL_PATH = Path(__file__).with_name("score_model.json")


@dataclass(frozen=True)
class ScoreModel:
    """Trees as padded (n_trees, n_nodes) arrays; a leaf's value already includes the learning rate."""

    components: tuple[str, ...]
    baseline: float
    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    fitted: dict

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreModel":
        trees = data["trees"]
        width = max(len(t["value"]) for t in trees)

        def padded(key: str, dtype) -> np.ndarray:
            out = np.zeros((len(trees), width), dtype=dtype)
            for i, tree in enumerate(trees):
                out[i, : len(tree[key])] = tree[key]
            return out

        return cls(
            components=tuple(data["components"]), baseline=float(data["baseline"]),
            feature=padded("feature", np.int64), threshold=padded("threshold", np.float64),
            missing_left=padded("missing_left", bool), left=padded("left", np.int64),
            right=padded("right", np.int64), is_leaf=padded("is_leaf", bool), value=padded("value", np.float64),
            fitted=data.get("fitted", {}),
        )

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        """Log-odds of a competent operator for each row of x (n_episodes, len(components); NaN = null)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.components):
            raise ValueError(f"expected a matrix of the {len(self.components)} components {self.components}, "
                             f"got shape {x.shape}")
        n_trees = self.value.shape[0]
        trees = np.broadcast_to(np.arange(n_trees), (x.shape[0], n_trees))
        rows = np.broadcast_to(np.arange(x.shape[0])[:, None], trees.shape)
        node = np.zeros(trees.shape, dtype=np.int64)
        # Every tree walked one level per pass, all episodes at once; a leaf stays where it is.
        for _ in range(self.value.shape[1]):
            leaf = self.is_leaf[trees, node]
            if leaf.all():
                break
            values = x[rows, self.feature[trees, node]]
            go_left = np.where(np.isnan(values), self.missing_left[trees, node], values <= self.threshold[trees, node])
            node = np.where(leaf, node, np.where(go_left, self.left[trees, node], self.right[trees, node]))
        return self.baseline + self.value[trees, node].sum(axis=1)

    def probability(self, x: np.ndarray) -> np.ndarray:
        """The score: 1 / (1 + exp(-log_odds)), in (0, 1)."""
        return self.to_probability(self.log_odds(x))

    @staticmethod
    def to_probability(log_odds: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-log_odds))


@functools.cache
def load_score_model(path: Path = MODEL_PATH) -> ScoreModel:
    """The shipped model (cached); a clear error when the file is missing or not a score model."""
    try:
        data = json.loads(Path(path).read_text())
        return ScoreModel.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot load the quality score model from {path} ({exc}); "
                           "regenerate it with `python benchmarks/fit_score.py --write-model`") from exc
