"""A published dataset version read back for export: step rows, episodes, features, reward.

Both exporters see the same thing: every split's step rows in one frame (camera frames as
their encoded bytes), ordered by split (the version's order), then episode_id and step; one
row per episode with its `episode_index` in that order, its split and its episode-level
columns (scores, lineage); the feature declarations of `meta/info.json`; and which column
gives the reward.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from foundations.feature_stats import IMAGE_PREFIX
from foundations.recipes import SPLIT

# The environment reward plus the weighted referee reward, then the logged reward alone, then the
# referee's alone, then the robot's measured progress (foundations.recipes.with_rewards): the first one
# with a value on every step is the reward.
REWARD_COLUMNS = ("combined_reward", "reward", "referee_reward", "progress_reward")
FLAGS = ("is_first", "is_last", "is_terminal")


@dataclass(frozen=True)
class Published:
    """One published version, read for export (see the module docstring)."""

    record: dict[str, Any]  # version.json plus `path`
    info: dict[str, Any]  # meta/info.json
    steps: pl.DataFrame  # step rows with `split` and `episode_index`
    episodes: pl.DataFrame  # one row per episode, by episode_index
    reward: str | None  # the column every exported reward comes from; None: no column has a reward on every step

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def version(self) -> str:
        return self.record["version"]

    @property
    def fps(self) -> float | None:
        return self.info.get("fps")

    def spec(self, column: str) -> dict[str, Any]:
        return self.info["features"].get(column) or {}

    @property
    def instructions(self) -> pl.Series:
        """The instruction of every step ("" where none was logged): LeRobot's task, Minari's instruction."""
        if "language_instruction" not in self.steps.columns:
            return pl.Series("language_instruction", [""] * self.steps.height, pl.String)
        return self.steps.get_column("language_instruction").fill_null("")

    def columns(self) -> tuple[list[str], list[str], dict[str, str]]:
        """What both exports carry: the action and the numeric `observation.*` vectors with one length on
        every step, the cameras with a frame on every step; and why any other such column is left out."""
        vectors, images, left_out = [], [], {}
        for col, dtype in self.steps.schema.items():
            spec = self.spec(col)
            if col.startswith(IMAGE_PREFIX) and spec.get("dtype") == "image":
                if not spec.get("shape"):
                    left_out[col] = "no frame of it decodes, so its size is unknown"
                elif self.steps.get_column(col).null_count():
                    left_out[col] = "some steps have no frame"
                else:
                    images.append(col)
            elif col != "action" and not col.startswith("observation."):
                continue
            elif not (isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_numeric()):
                left_out[col] = f"not a numeric vector ({dtype})"
            elif not spec.get("shape"):
                left_out[col] = "its length varies from step to step"
            elif self.steps.select(pl.col(col).is_null().any() | pl.col(col).list.eval(pl.element().is_null())
                                   .list.any().any()).item():
                left_out[col] = "some steps have no value"
            else:
                vectors.append(col)
        return vectors, images, left_out


def load_published(record: dict[str, Any], reward: str | None = None) -> Published:
    """Read the version of `record` (from VersionStore.resolve). `reward` names the reward column;
    by default the first of REWARD_COLUMNS with a value on every step. Raises ValueError when the
    named column is absent or incomplete, or the version has no step rows."""
    path = Path(record["path"])
    info = json.loads((path / "meta" / "info.json").read_text(encoding="utf-8"))
    frames = []
    for split in info.get("splits") or {}:
        shards = sorted((path / "data").glob(f"{split}-*.parquet"))
        if shards:
            frames.append(pl.read_parquet(shards).with_columns(pl.lit(split).alias(SPLIT)))
    if not frames:
        raise ValueError(f"{record['name']} v{record['version']} has no step rows under {path / 'data'}")
    steps = pl.concat(frames, how="vertical_relaxed")
    # camera frames are published as datasets.Image structs {bytes, path}: the encoded bytes are the frame
    steps = steps.with_columns(pl.col(c).struct.field("bytes").alias(c) for c, t in steps.schema.items()
                               if c.startswith(IMAGE_PREFIX) and isinstance(t, pl.Struct))
    order = {s: i for i, s in enumerate(info["splits"])}
    steps = (steps.with_columns(pl.col(SPLIT).replace_strict(order, return_dtype=pl.Int64).alias("_split_order"))
             .sort("_split_order", "episode_id", "step").drop("_split_order"))
    steps = steps.with_columns(pl.col("episode_id").rle_id().cast(pl.Int64).alias("episode_index"))
    meta = pl.read_parquet(path / "meta" / "episodes.parquet").drop(SPLIT, strict=False)
    episodes = (steps.group_by("episode_index", maintain_order=True)
                .agg(pl.col("episode_id").first(), pl.col(SPLIT).first(), pl.len().cast(pl.Int64).alias("length"))
                .join(meta.drop("n_steps", strict=False), on="episode_id", how="left"))
    return Published(record=record, info=info, steps=steps, episodes=episodes,
                     reward=_reward_column(steps, reward, f"{record['name']} v{record['version']}"))


def _reward_column(steps: pl.DataFrame, wanted: str | None, what: str) -> str | None:
    if wanted is not None:
        if wanted not in steps.columns:
            present = [c for c in REWARD_COLUMNS if c in steps.columns]
            raise ValueError(f"{what} has no column {wanted!r}; reward columns present: {present or 'none'}")
        missing = steps.get_column(wanted).cast(pl.Float64, strict=False).is_nan().fill_null(True).sum()
        if missing:
            raise ValueError(f"{what}: {missing} of {steps.height} steps have no {wanted!r} value; "
                             "export another reward column, or none")
        return wanted
    for col in REWARD_COLUMNS:
        if col in steps.columns and not steps.get_column(col).cast(pl.Float64).is_nan().fill_null(True).any():
            return col
    return None
