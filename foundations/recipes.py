"""Dataset recipes: which accepted episodes go into a published dataset, and how they split.

A recipe is a YAML file in `datasets/` (see datasets/ant_skills.yaml for the documented
format). `select_episodes` applies it to the canonical episode table and the
per-episode scores; every episode it leaves out comes back as a record with a reason.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from foundations.schema import QUARANTINE_SCHEMA

RECIPES_DIR = Path(__file__).resolve().parents[1] / "datasets"
SOURCES_DIR = RECIPES_DIR / "sources"

# Names become folder names on disk and on the Hub; splits must satisfy HF's split regex.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
_SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
_TOP_KEYS = {"name", "description", "sources", "filters", "splits", "license", "publish", "rewards"}
_FILTER_KEYS = {"min_quality_score", "min_steps", "instructions"}
_PUBLISH_KEYS = {"shard_rows", "hub_repo"}
DEFAULT_LICENSE = "apache-2.0"
DEFAULT_SHARD_ROWS = 50_000
DEFAULT_REFEREE_WEIGHT = 1.0  # combined_reward = reward + weight x referee_reward
SPLIT = "split"
QUALITY = "quality_score"


class RecipeError(ValueError):
    """A recipe file is missing, unreadable, or has an invalid key; the message names the key."""


@dataclass(frozen=True)
class Filters:
    """Episode filters; None disables a filter."""

    min_quality_score: float | None = None
    min_steps: int | None = None
    instructions: tuple[str, ...] | None = None  # keep only these instructions when given


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. `splits` maps split name to its fraction of episodes (sums to 1)."""

    name: str
    description: str
    sources: tuple[str, ...]
    filters: Filters
    splits: dict[str, float]
    license: str = DEFAULT_LICENSE
    shard_rows: int = DEFAULT_SHARD_ROWS
    hub_repo: str | None = None
    referee_weight: float = DEFAULT_REFEREE_WEIGHT
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The normalised recipe (defaults filled in), as recorded in the dataset card."""
        filters = {
            "min_quality_score": self.filters.min_quality_score,
            "min_steps": self.filters.min_steps,
            "instructions": list(self.filters.instructions) if self.filters.instructions is not None else None,
        }
        return {
            "name": self.name,
            "description": self.description,
            "sources": list(self.sources),
            "filters": filters,
            "splits": dict(self.splits),
            "license": self.license,
            "publish": {"shard_rows": self.shard_rows, "hub_repo": self.hub_repo},
            "rewards": {"referee_weight": self.referee_weight},
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


def list_recipes() -> list[str]:
    """Names of all recipes: the top-level `*.yaml` files of `datasets/` (not `datasets/sources/`)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if p.is_file())


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load and validate a recipe by bare name (`datasets/<name>.yaml`) or by path to a YAML file."""
    path = _recipe_path(name_or_path)
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
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(_TOP_KEYS)}")

    name = raw.get("name", path.stem if path is not None else None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RecipeError(
            f"{where}: 'name' must be lower-case letters, digits, '_' or '-' (it names folders), got {name!r}"
        )
    if path is not None and name != path.stem:
        raise RecipeError(f"{where}: 'name' is {name!r} but the file is {path.name}; make them match")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"{where}: 'description' must be a string")

    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise RecipeError(f"{where}: 'sources' must be a non-empty list of source mapping names")
    missing = [s for s in sources if not (SOURCES_DIR / f"{s}.yaml").is_file()]
    if missing:
        raise RecipeError(
            f"{where}: 'sources' names {missing}, which have no mapping file in {SOURCES_DIR.name}/; "
            f"known: {sorted(p.stem for p in SOURCES_DIR.glob('*.yaml'))}"
        )

    license_ = raw.get("license", DEFAULT_LICENSE)
    if not isinstance(license_, str) or not license_:
        raise RecipeError(f"{where}: 'license' must be a licence identifier such as 'apache-2.0'")
    shard_rows, hub_repo = _parse_publish(raw.get("publish"), where)
    return Recipe(
        name=name,
        description=description,
        sources=tuple(sources),
        filters=_parse_filters(raw.get("filters"), where),
        splits=_parse_splits(raw.get("splits"), where),
        license=license_,
        shard_rows=shard_rows,
        hub_repo=hub_repo,
        referee_weight=_parse_rewards(raw.get("rewards"), where),
        path=path,
    )


def _recipe_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")) or "/" in text
    path = Path(text).expanduser() if looks_like_path else RECIPES_DIR / f"{text}.yaml"
    if not path.is_file():
        hint = f"known recipes: {list_recipes()}" if not looks_like_path else "check the path"
        raise RecipeError(f"recipe {name_or_path!r} not found at {path}; {hint}")
    return path.resolve()


def _parse_rewards(raw: Any, where: str) -> float:
    if raw is None:
        return DEFAULT_REFEREE_WEIGHT
    if not isinstance(raw, dict) or set(raw) - {"referee_weight"}:
        raise RecipeError(f"{where}: 'rewards' must be a mapping with the one key 'referee_weight'")
    w = raw.get("referee_weight", DEFAULT_REFEREE_WEIGHT)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise RecipeError(f"{where}: 'rewards.referee_weight' must be a finite number, got {w!r}")
    return float(w)


def with_rewards(episodes: pl.DataFrame, referee: pl.DataFrame | None, recipe: Recipe) -> pl.DataFrame:
    """Join the referee's per-step reward and add `combined_reward` =
    environment reward (0 where none was logged) + `referee_weight` x referee reward.

    Without referee labels both columns are null: the dataset says plainly that no
    dense reward exists rather than inventing one.
    """
    if referee is None:
        referee = pl.DataFrame(schema={"episode_id": pl.String, "step": pl.Int32, "referee_reward": pl.Float32})
    joined = episodes.join(
        referee.select("episode_id", pl.col("step").cast(pl.Int32), pl.col("referee_reward").cast(pl.Float32)),
        on=["episode_id", "step"], how="left",
    )
    combined = pl.col("reward").fill_null(0.0) + recipe.referee_weight * pl.col("referee_reward")
    return joined.with_columns(combined.cast(pl.Float32).alias("combined_reward"))


def _parse_filters(raw: Any, where: str) -> Filters:
    if raw is None:
        return Filters()
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: 'filters' must be a mapping")
    unknown = sorted(set(raw) - _FILTER_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown} in 'filters'; allowed: {sorted(_FILTER_KEYS)}")
    q = raw.get("min_quality_score")
    if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q)):
        raise RecipeError(f"{where}: 'filters.min_quality_score' must be a number, got {q!r}")
    n = raw.get("min_steps")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RecipeError(f"{where}: 'filters.min_steps' must be a positive integer, got {n!r}")
    instr = raw.get("instructions")
    if instr is not None and (
        not isinstance(instr, list) or not instr or not all(isinstance(i, str) for i in instr)
    ):
        raise RecipeError(f"{where}: 'filters.instructions' must be a non-empty list of strings")
    return Filters(
        min_quality_score=float(q) if q is not None else None,
        min_steps=n,
        instructions=tuple(instr) if instr is not None else None,
    )


def _parse_splits(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {"train": 1.0}
    if not isinstance(raw, dict) or not raw:
        raise RecipeError(f"{where}: 'splits' must be a mapping of split name to fraction, e.g. {{train: 0.9, test: 0.1}}")
    splits: dict[str, float] = {}
    for key, frac in raw.items():
        if not isinstance(key, str) or not _SPLIT_RE.match(key):
            raise RecipeError(f"{where}: split name {key!r} in 'splits' must be word characters (e.g. train, test)")
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
            raise RecipeError(f"{where}: 'splits.{key}' must be a fraction in (0, 1], got {frac!r}")
        splits[key] = float(frac)
    total = sum(splits.values())
    if abs(total - 1.0) > 1e-6:
        raise RecipeError(f"{where}: 'splits' fractions must sum to 1, they sum to {total:g}")
    return splits


def _parse_publish(raw: Any, where: str) -> tuple[int, str | None]:
    if raw is None:
        return DEFAULT_SHARD_ROWS, None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: 'publish' must be a mapping")
    unknown = sorted(set(raw) - _PUBLISH_KEYS)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown} in 'publish'; allowed: {sorted(_PUBLISH_KEYS)}")
    rows = raw.get("shard_rows", DEFAULT_SHARD_ROWS)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise RecipeError(f"{where}: 'publish.shard_rows' must be a positive integer, got {rows!r}")
    repo = raw.get("hub_repo")
    if repo is not None and (not isinstance(repo, str) or repo.count("/") != 1):
        raise RecipeError(f"{where}: 'publish.hub_repo' must look like 'owner/name', got {repo!r}")
    return rows, repo


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


def select_episodes(recipe: Recipe, episodes: pl.DataFrame, scores: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply a recipe to the accepted canonical table.

    Returns `(selected, decisions)`. `selected` holds the step rows of the kept episodes,
    sorted by (episode_id, step), with every episode-level score column joined on and a
    `split` column. `decisions` has one row per input episode, sorted by episode_id:
    `n_steps`, lineage, the score columns, `selected`, `split` (null when left out), and
    for left-out episodes `check` (first failed filter) and `reason` (all of them, readable);
    `excluded_records(decisions)` turns those into quarantine-schema rows.
    Raises ValueError when the inputs cannot be curated (missing columns, duplicate scores).
    """
    required = {"episode_id", "step"} | ({"language_instruction"} if recipe.filters.instructions else set())
    missing = sorted(required - set(episodes.columns))
    if missing:
        raise ValueError(f"episode table lacks column(s) {missing} needed by recipe {recipe.name!r}")
    scores = _checked_scores(recipe, episodes, scores)
    score_cols = [c for c in scores.columns if c != "episode_id"]

    lineage = [c for c in ("language_instruction", "robot_id", "source", "source_file", "source_sha256") if c in episodes.columns]
    per_episode = (
        episodes.group_by("episode_id")
        .agg(pl.len().cast(pl.Int64).alias("n_steps"), *[pl.col(c).first() for c in lineage])
        .join(scores, on="episode_id", how="left")
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
    return selected, decisions


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
    mislabel a dimension. Names look like `odom.pose.pose.position.z` or `joint_states.position[3]`.
    """
    found: dict[str, list[str]] | None = None
    for source in recipe.sources:
        mapping = yaml.safe_load((SOURCES_DIR / f"{source}.yaml").read_text(encoding="utf-8")) or {}
        names = {feat: _entry_names(entries) for feat, entries in (mapping.get("features") or {}).items()
                 if isinstance(entries, list)}
        names = {k: v for k, v in names.items() if v is not None}
        found = names if found is None else {k: v for k, v in found.items() if names.get(k) == v}
    return found or {}


def _entry_names(entries: list[Any]) -> list[str] | None:
    names: list[str] = []
    for entry in entries:
        if not isinstance(entry, dict) or "topic" not in entry or "field" not in entry:
            return None
        base = f"{str(entry['topic']).strip('/').replace('/', '.')}.{entry['field']}"
        if "components" in entry:
            names += [f"{base}.{c}" for c in entry["components"]]
        elif "size" in entry:
            names += [f"{base}[{i}]" for i in range(int(entry["size"]))]
        elif "transform" in entry:
            names.append(f"{base}:{entry['transform']}")
        else:
            names.append(base)
    return names


__all__ = [
    "Filters", "Recipe", "RecipeError", "assign_splits", "excluded_records", "feature_names", "list_recipes",
    "load_recipe", "parse_recipe", "select_episodes",
]
