"""Dataset recipes: which accepted episodes go into a published dataset, and how they split.

A recipe is a YAML file at the top of the config folder (`datasets/`; format in
datasets/README.md), validated by the pydantic model `Recipe`. `select_episodes` applies it
to the canonical episode table and the per-episode scores: it draws on the episodes of the
recipe's sources only, and every episode it leaves out comes back as a record with a reason.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from foundations.catalog import config_error, config_path, list_configs
from foundations.profile import RobotProfile
from foundations.progress import progress_rewards
from foundations.schema import QUARANTINE_SCHEMA

DEFAULT_LICENSE = "apache-2.0"
DEFAULT_SHARD_ROWS = 50_000
DEFAULT_REFEREE_WEIGHT = 1.0  # combined_reward = reward + weight x referee_reward
SPLIT = "split"
QUALITY = "quality_score"
# Names become folder names on disk and on the Hub; splits must satisfy HF's split regex.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]*$"
SPLIT_PATTERN = r"^\w+(\.\w+)*$"


class RecipeError(ValueError):
    """A recipe file is missing, unreadable, or has an invalid key; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filters(_Strict):
    """Episode filters; None disables a filter."""

    min_quality_score: Optional[float] = Field(None, allow_inf_nan=False)
    min_steps: Optional[int] = Field(None, ge=1)
    instructions: Optional[tuple[str, ...]] = Field(None, min_length=1)  # keep only these instructions
    # Drop each episode's leading and trailing idle steps (idle_start_steps / idle_end_steps of the
    # scores, or of the trims given to select_episodes); false keeps every step.
    trim_idle: bool = False


class PublishOptions(_Strict):
    shard_rows: int = Field(DEFAULT_SHARD_ROWS, ge=1)
    hub_repo: Optional[str] = Field(None, pattern=r"^[^/\s]+/[^/\s]+$")  # 'owner/name'


class Rewards(_Strict):
    referee_weight: float = Field(DEFAULT_REFEREE_WEIGHT, allow_inf_nan=False)


class Recipe(_Strict):
    """A validated recipe. `splits` maps split name to its fraction of episodes (sums to 1)."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    sources: tuple[str, ...] = Field(min_length=1)
    filters: Filters = Filters()
    splits: dict[str, float] = {"train": 1.0}
    license: str = Field(DEFAULT_LICENSE, min_length=1)
    publish: PublishOptions = PublishOptions()
    rewards: Rewards = Rewards()
    path: Optional[Path] = Field(None, exclude=True)

    @field_validator("sources")
    @classmethod
    def _sources_exist(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = list_configs("sources")
        missing = [s for s in v if s not in known]
        if missing:
            raise ValueError(f"names {missing}, which have no mapping file in sources/; known: {known}")
        return v

    @field_validator("splits")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        for key, frac in v.items():
            if not re.match(SPLIT_PATTERN, key):
                raise ValueError(f"split name {key!r} must be word characters (e.g. train, test)")
            if not 0 < frac <= 1:
                raise ValueError(f"fraction of {key!r} must lie in (0, 1], got {frac!r}")
        if not v or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, they sum to {sum(v.values()):g}")
        return v

    @property
    def shard_rows(self) -> int:
        return self.publish.shard_rows

    @property
    def hub_repo(self) -> str | None:
        return self.publish.hub_repo

    @property
    def referee_weight(self) -> float:
        return self.rewards.referee_weight

    def to_dict(self) -> dict[str, Any]:
        """The normalised recipe (defaults filled in), as recorded in the dataset card."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def list_recipes() -> list[str]:
    """Names of all recipes: the top-level `*.yaml` files of the config folder (not sources/, robots/, targets/)."""
    return list_configs("recipes")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by bare name (`<config folder>/<name>.yaml`) or by path to a YAML file."""
    path = config_path("recipes", name_or_path, RecipeError).resolve()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path}: not valid YAML ({exc})") from exc
    return parse_recipe(raw, path=path)


def parse_recipe(raw: Any, *, path: Path | None = None) -> Recipe:
    """Validate a recipe mapping (as read from YAML); raises RecipeError naming the bad key."""
    where = f"recipe {path}" if path is not None else "recipe"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping of keys, got {type(raw).__name__}")
    if path is not None:
        raw = {"name": path.stem, **raw}
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise RecipeError(config_error(where, exc)) from None
    if path is not None and recipe.name != path.stem:
        raise RecipeError(f"{where}: key 'name': is {recipe.name!r} but the file is {path.name}; make them match")
    return recipe.model_copy(update={"path": path})


def with_rewards(episodes: pl.DataFrame, referee: pl.DataFrame | None, recipe: Recipe,
                 profiles: Mapping[str, RobotProfile] | None = None) -> pl.DataFrame:
    """Join the referee's per-step reward, add the robot's measured `progress_reward` and
    `combined_reward` = environment reward (0 where none was logged) + `referee_weight` x referee reward.

    Without referee labels `referee_reward` and `combined_reward` are null: the dataset says
    plainly that no dense reward exists rather than inventing one. `progress_reward`
    (`foundations.progress.progress_rewards`) is the change of the instruction's measure per step over
    the skill's target, from the robot profile of each row's source (`profiles` {source: profile}; by
    default the profiles the recipe's source mappings name); null where it cannot be measured.
    """
    if referee is None:
        referee = pl.DataFrame(schema={"episode_id": pl.String, "step": pl.Int32, "referee_reward": pl.Float32})
    joined = episodes.join(
        referee.select("episode_id", pl.col("step").cast(pl.Int32), pl.col("referee_reward").cast(pl.Float32)),
        on=["episode_id", "step"], how="left",
    )
    if profiles is None:
        from foundations.ingest.mapping import load_mapping

        profiles = {source: load_mapping(source).profile for source in recipe.sources}
    parts = [progress_rewards(joined.filter(pl.col("source") == source), profile)
             for source, profile in profiles.items() if profile is not None]
    progress = pl.concat([p for p in parts if p.height], how="vertical") if any(p.height for p in parts) else None
    if progress is None:
        progress = pl.DataFrame(schema={"episode_id": pl.String, "step": pl.Int32, "progress_reward": pl.Float32})
    joined = joined.join(progress.with_columns(pl.col("episode_id").cast(joined.schema["episode_id"])),
                         on=["episode_id", "step"], how="left", maintain_order="left")
    combined = pl.col("reward").fill_null(0.0) + recipe.referee_weight * pl.col("referee_reward")
    return joined.with_columns(combined.cast(pl.Float32).alias("combined_reward"))


def assign_splits(episode_ids: pl.Series, splits: dict[str, float]) -> pl.Series:
    """Split name per episode id, from sha256(episode_id): stable across runs, machines and polars versions.

    The first 8 bytes of the digest, read as a fraction of 2**64, fall into the
    cumulative split fractions in recipe order. One hash per distinct id.
    """
    unique = episode_ids.unique(maintain_order=True)
    ids = unique.to_list()
    # hashlib has no batch API; this runs once per episode, not per step.
    draws = np.array(
        [int.from_bytes(hashlib.sha256(str(e).encode("utf-8")).digest()[:8], "big") for e in ids],
        dtype=np.float64,
    ) / 2.0**64
    names = list(splits)
    bounds = np.cumsum([splits[n] for n in names])
    bounds[-1] = np.inf  # rounding never pushes an episode past the last split
    index = np.searchsorted(bounds, draws, side="right")
    mapping = pl.DataFrame({"_id": unique, SPLIT: np.asarray(names, dtype=object)[index].tolist()},
                           schema={"_id": episode_ids.dtype, SPLIT: pl.String})
    return (
        pl.DataFrame({"_id": episode_ids})
        .join(mapping, on="_id", how="left", maintain_order="left")
        .get_column(SPLIT)
    )


TRIM_START, TRIM_END = "idle_start_steps", "idle_end_steps"


def select_episodes(recipe: Recipe, episodes: pl.DataFrame, scores: pl.DataFrame | None,
                    trims: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply a recipe to the accepted canonical table.

    With `filters.trim_idle`, each kept episode loses its first idle_start_steps and last
    idle_end_steps steps (from `trims`, one row per episode_id, else from the scores' columns of
    those names); is_first / is_last / is_terminal move to the new first and last step, and an
    episode with nothing left is left out (check "trim_idle"). An episode without a trim
    record keeps every step. Step numbers are kept as logged.

    Returns `(selected, decisions)`. `selected` holds the step rows of the kept episodes,
    sorted by (episode_id, step), with every episode-level score column joined on and a
    `split` column. `decisions` has one row per input episode, sorted by episode_id:
    `n_steps`, lineage, the score columns, `selected`, `split` (null when left out), and
    for left-out episodes `check` (first failed filter) and `reason` (all of them, readable);
    `excluded_records(decisions)` turns those into quarantine-schema rows.
    Raises ValueError when the inputs cannot be curated (missing columns, duplicate scores).
    """
    required = {"episode_id", "step", "source"} | ({"language_instruction"} if recipe.filters.instructions else set())
    missing = sorted(required - set(episodes.columns))
    if missing:
        raise ValueError(f"episode table lacks column(s) {missing} needed by recipe {recipe.name!r}")
    episodes = episodes.filter(pl.col("source").is_in(list(recipe.sources)))
    scores = _checked_scores(recipe, episodes, scores)
    score_cols = [c for c in scores.columns if c != "episode_id"]
    trim = _trim_frame(recipe, scores, trims, episodes.schema["episode_id"])

    lineage = [c for c in ("language_instruction", "robot_id", "source", "source_file", "source_sha256") if c in episodes.columns]
    per_episode = (
        episodes.group_by("episode_id")
        .agg(pl.len().cast(pl.Int64).alias("n_steps"), *[pl.col(c).first() for c in lineage])
        .join(scores, on="episode_id", how="left")
        .join(trim, on="episode_id", how="left")
        .with_columns(pl.col("_trim_start", "_trim_end").fill_null(0))
    )
    failed = _failed_filters(recipe.filters)
    checks = [name for name, _, _ in failed]
    why = [f"_why_{name}" for name in checks]
    decisions = (
        per_episode.with_columns(
            *[pl.when(cond).then(reason).otherwise(pl.lit(None, pl.String)).alias(f"_why_{name}")
              for name, cond, reason in failed]
        )
        .with_columns(
            pl.coalesce([pl.when(pl.col(w).is_not_null()).then(pl.lit(n)) for n, w in zip(checks, why)]
                        or [pl.lit(None, pl.String)]).alias("check"),
            pl.concat_str([pl.col(w) for w in why] or [pl.lit(None, pl.String)], separator="; ", ignore_nulls=True)
            .alias("reason"),
        )
        .drop(why)
        .sort("episode_id")
    )
    decisions = decisions.with_columns(
        pl.col("check").is_null().alias("selected"),
        pl.when(pl.col("check").is_null())
        .then(assign_splits(decisions.get_column("episode_id"), recipe.splits))
        .alias(SPLIT),
    ).select("episode_id", "n_steps", *lineage, *score_cols, "selected", SPLIT, "check", "reason")
    kept = decisions.filter(pl.col("selected")).select("episode_id", *score_cols, SPLIT)
    selected = (
        episodes.drop(SPLIT, strict=False)
        .join(kept, on="episode_id", how="inner")
        .sort("episode_id", "step")
    )
    if recipe.filters.trim_idle:
        selected = _drop_idle_ends(selected, trim)
    return selected, decisions.drop("_trim_start", "_trim_end", strict=False)


def _trim_frame(recipe: Recipe, scores: pl.DataFrame, trims: pl.DataFrame | None, id_type: pl.DataType) -> pl.DataFrame:
    """episode_id, _trim_start, _trim_end: the idle steps to drop at each end (zeros without trim_idle)."""
    empty = pl.DataFrame(schema={"episode_id": id_type, "_trim_start": pl.Int64, "_trim_end": pl.Int64})
    if not recipe.filters.trim_idle:
        return empty
    source = trims if trims is not None else scores
    what = "the trims frame" if trims is not None else "the scores"
    missing = sorted({"episode_id", TRIM_START, TRIM_END} - set(source.columns))
    if missing:
        raise ValueError(f"recipe {recipe.name!r} sets filters.trim_idle but {what} lack column(s) {missing}; "
                         "score the episodes with quality.scores (it records the idle trims) or set trim_idle: false")
    frame = source.select(pl.col("episode_id").cast(id_type), pl.col(TRIM_START).cast(pl.Int64).alias("_trim_start"),
                          pl.col(TRIM_END).cast(pl.Int64).alias("_trim_end"))
    if frame.get_column("episode_id").is_duplicated().any():
        raise ValueError(f"{what} repeat an episode_id; give one idle-trim row per episode")
    bad = frame.filter((pl.col("_trim_start") < 0) | (pl.col("_trim_end") < 0))
    if bad.height:
        raise ValueError(f"{what} have negative idle trims, e.g. for episode {bad.item(0, 'episode_id')!r}")
    return frame


def _drop_idle_ends(selected: pl.DataFrame, trim: pl.DataFrame) -> pl.DataFrame:
    """Rows of `selected` (sorted by episode_id, step) without each episode's idle ends, step flags moved."""
    position = pl.int_range(pl.len()).over("episode_id")
    n = pl.len().over("episode_id")
    out = (
        selected.join(trim, on="episode_id", how="left", maintain_order="left")
        .with_columns(pl.col("_trim_start", "_trim_end").fill_null(0))
        .with_columns(_pos=position, _n=n)
        .filter((pl.col("_pos") >= pl.col("_trim_start")) & (pl.col("_pos") < pl.col("_n") - pl.col("_trim_end")))
    )
    flags = {}
    if "is_first" in out.columns:
        flags["is_first"] = pl.col("_pos") == pl.col("_pos").min().over("episode_id")
    if "is_last" in out.columns:
        flags["is_last"] = pl.col("_pos") == pl.col("_pos").max().over("episode_id")
    if "is_terminal" in out.columns:
        # A failure still ends the episode when the still steps after it are dropped.
        terminal = selected.group_by("episode_id").agg(pl.col("is_terminal").any().alias("_terminal"))
        out = out.join(terminal, on="episode_id", how="left", maintain_order="left")
        flags["is_terminal"] = (pl.col("_pos") == pl.col("_pos").max().over("episode_id")) & pl.col("_terminal")
    return out.with_columns(**flags).drop("_trim_start", "_trim_end", "_pos", "_n", "_terminal", strict=False)


def excluded_records(decisions: pl.DataFrame) -> pl.DataFrame:
    """The left-out episodes of `select_episodes` as QUARANTINE_SCHEMA rows (stage "recipe")."""
    return (
        decisions.filter(~pl.col("selected"))
        .select(
            pl.col("episode_id").cast(pl.String),
            *[(pl.col(c) if c in decisions.columns else pl.lit(None)).cast(pl.String).alias(c)
              for c in ("source", "source_file", "source_sha256")],
            pl.lit("recipe").alias("stage"),
            pl.col("check"),
            pl.col("reason"),
        )
        .cast(QUARANTINE_SCHEMA)
    )


def _checked_scores(recipe: Recipe, episodes: pl.DataFrame, scores: pl.DataFrame | None) -> pl.DataFrame:
    if scores is None:
        scores = pl.DataFrame(schema={"episode_id": episodes.schema["episode_id"]})
    if "episode_id" not in scores.columns:
        raise ValueError("scores frame has no 'episode_id' column to join on")
    reserved = set(episodes.columns) | {SPLIT, "n_steps", "selected", "check", "reason"}
    clash = sorted((set(scores.columns) - {"episode_id"}) & reserved)
    if clash:
        raise ValueError(f"scores column(s) {clash} clash with episode table or decision columns; rename them in the scores")
    dupes = scores.get_column("episode_id").is_duplicated().sum()
    if dupes:
        raise ValueError(f"scores has {dupes} rows with a duplicated episode_id; give one score row per episode")
    if recipe.filters.min_quality_score is not None and QUALITY not in scores.columns:
        raise ValueError(
            f"recipe {recipe.name!r} filters on min_quality_score but the scores have no {QUALITY!r} column"
        )
    if QUALITY in scores.columns and scores.schema[QUALITY].is_float():
        # polars orders NaN above every number, so a NaN score would pass a >= filter.
        scores = scores.with_columns(pl.col(QUALITY).fill_nan(None))
    return scores.with_columns(pl.col("episode_id").cast(episodes.schema["episode_id"]))


def _text(prefix: str, value: pl.Expr, suffix: str = "") -> pl.Expr:
    # concat_str rather than pl.format: recipe text may contain braces.
    return pl.concat_str([pl.lit(prefix), value.cast(pl.String), pl.lit(suffix)])


def _failed_filters(filters: Filters) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(check name, condition that excludes, readable reason) for each active filter."""
    out: list[tuple[str, pl.Expr, pl.Expr]] = []
    if filters.min_quality_score is not None:
        q, lo = pl.col(QUALITY), filters.min_quality_score
        out.append(("missing_quality_score", q.is_null(),
                    pl.lit(f"no quality_score for this episode, and the recipe requires quality_score >= {lo:g}")))
        out.append(("min_quality_score", q < lo,
                    _text("quality_score ", q.round(4), f" is below the recipe's min_quality_score {lo:g}")))
    if filters.trim_idle:
        left = pl.col("n_steps") - pl.col("_trim_start") - pl.col("_trim_end")
        out.append(("trim_idle", left <= 0,
                    _text("every one of its ", pl.col("n_steps"), " steps is idle, so the recipe's trim_idle leaves none")))
    if filters.min_steps is not None:
        n = filters.min_steps
        out.append(("min_steps", pl.col("n_steps") < n,
                    _text("episode has ", pl.col("n_steps"), f" steps, fewer than the recipe's min_steps {n}")))
    if filters.instructions is not None:
        allowed = list(filters.instructions)
        instr = pl.col("language_instruction")
        out.append(("instruction", instr.is_null() | ~instr.is_in(allowed),
                    _text("instruction '", instr.fill_null("<none>"), f"' is not among the recipe's instructions {allowed}")))
    return out


def feature_names(recipe: Recipe) -> dict[str, list[str]]:
    """Element names of vector features (e.g. observation.state), read from the recipe's source mappings.

    A name is kept only where every source mapping agrees, so that names never
    mislabel a dimension. Names look like `/odom.pose.pose.position.z` or `/joint_states.position[3]`.
    """
    from foundations.ingest.mapping import load_mapping

    found: dict[str, list[str]] | None = None
    for source in recipe.sources:
        mapping = load_mapping(source)
        names = {feat: mapping.feature_names(feat) for feat in mapping.features}
        found = names if found is None else {k: v for k, v in found.items() if names.get(k) == v}
    return found or {}


__all__ = [
    "Filters", "Recipe", "RecipeError", "assign_splits", "excluded_records", "feature_names", "list_recipes",
    "load_recipe", "parse_recipe", "select_episodes",
]
