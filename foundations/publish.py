"""Publish curated episodes as immutable, versioned Hugging Face datasets.

A version lives in `hub/<name>/v<semver>-<hash8>/` under the data root:

    data/<split>-00000-of-0000N.parquet   step rows, shards bounded in rows and bytes
    README.md                             dataset card with the Hub's YAML header
    meta/info.json                        features, shapes, element names, normalisation stats
    meta/episodes.parquet                 one row per episode: scores, split, lineage
    version.json                          name, version, content hash, parent, files' sha256

Versions are kept by the one versioned-artifact store (foundations.versions): built in a
hidden temporary folder and renamed into place, so a crash never leaves a visible
half-written version. The first version is 1.0.0; a publish whose
content hash equals the latest version's writes nothing and returns that version;
otherwise the minor version is bumped, or the major one when a column was removed
or changed type. `datasets.load_dataset(str(path))` loads a version folder directly.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from foundations.content_hash import canonical_type, table_content_hash
from foundations.dataset_card import jsonable, render_card
from foundations.feature_stats import feature_specs, feature_stats, hf_features, to_hub_arrow
from foundations.recipes import SPLIT, Recipe, assign_splits, feature_names
from foundations.schema import LINEAGE, POLARS_SCHEMA
from foundations.versions import VersionStore

log = logging.getLogger(__name__)

MAX_SHARD_BYTES = 256 * 1024 * 1024  # in-memory Arrow bytes; keeps image shards well under 2 GiB offsets
_STEP_LEVEL = set(POLARS_SCHEMA) | {SPLIT}


@dataclass(frozen=True)
class PublishResult:
    """What `publish` did. `splits` maps split name to {"episodes": n, "steps": n}."""

    name: str
    version: str
    content_hash: str
    path: Path
    created: bool
    n_episodes: int
    n_steps: int
    splits: dict[str, dict[str, int]]


def publish(
    recipe: Recipe,
    table: pl.DataFrame,
    *,
    sources: pl.DataFrame,
    validation: dict[str, Any],
    quality_stats: dict[str, Any],
    code_version: str,
    root: Path | None = None,
) -> PublishResult:
    """Publish the selected steps of a recipe as a new immutable version, unless nothing changed.

    `table` is the first output of `recipes.select_episodes` (canonical columns, score
    columns, `split`); without a `split` column splits are assigned from the recipe.
    `code_version` is recorded as given (`foundations.code_version.code_version()`).
    `sources` lists the run's source files (`source_file`, `source_sha256`), including
    those that contributed no episode. `root` is the hub folder (default: the data
    root's `hub/`). Raises ValueError when the table cannot be published.
    """
    missing = sorted({"source_file", "source_sha256"} - set(sources.columns))
    if missing:
        raise ValueError(f"sources frame lacks column(s) {missing}; give one row per source file with its sha256")
    data = _canonical(recipe, table)
    arrow = data.to_arrow()
    schema = {c: canonical_type(t) for c, t in zip(arrow.column_names, arrow.schema.types)}
    record, created = _store(root).commit(
        recipe.name,
        table_content_hash(arrow),
        lambda tmp, record: _build(tmp, recipe, data, record, sources=sources, validation=validation,
                                   quality_stats=quality_stats),
        fields={"code_version": code_version, "schema": schema},
        # a column removed or retyped breaks readers: major bump
        breaking=lambda latest: any(schema.get(col) != typ for col, typ in (latest.get("schema") or {}).items()),
    )
    return _result(record, created=created)


def _store(root: Path | None) -> VersionStore:
    """Dataset versions live in the data root's `hub/` (or `root`)."""
    return VersionStore("hub", kind="dataset", root=root)


def _canonical(recipe: Recipe, table: pl.DataFrame) -> pl.DataFrame:
    """Checked table in canonical row and column order, with a split per episode."""
    missing = sorted({"episode_id", "step"} - set(table.columns))
    if missing:
        raise ValueError(f"cannot publish {recipe.name!r}: the table lacks column(s) {missing}")
    if table.height == 0:
        raise ValueError(
            f"cannot publish {recipe.name!r}: no rows to publish; select_episodes reports why each episode was left out"
        )
    dupes = table.select(pl.struct("episode_id", "step").is_duplicated().sum()).item()
    if dupes:
        raise ValueError(f"cannot publish {recipe.name!r}: {dupes} rows repeat an (episode_id, step) pair")
    if SPLIT not in table.columns:
        table = table.with_columns(assign_splits(table.get_column("episode_id"), recipe.splits).alias(SPLIT))
    bad = table.filter(~pl.col(SPLIT).is_in(list(recipe.splits)) | pl.col(SPLIT).is_null())
    if bad.height:
        found = sorted(str(s) for s in bad.get_column(SPLIT).unique().to_list())
        raise ValueError(f"cannot publish {recipe.name!r}: split value(s) {found} are not in the recipe's splits {list(recipe.splits)}")
    split_counts = table.group_by("episode_id").agg(pl.col(SPLIT).n_unique().alias("n")).filter(pl.col("n") > 1)
    if split_counts.height:
        raise ValueError(f"cannot publish {recipe.name!r}: {split_counts.height} episodes have steps in more than one split")
    canonical = [c for c in POLARS_SCHEMA if c in table.columns]
    observations = sorted(c for c in table.columns if c.startswith("observation.") and c not in POLARS_SCHEMA)
    rest = [c for c in table.columns if c not in canonical and c not in observations and c != SPLIT]
    return table.select(*canonical, *observations, *rest, SPLIT).sort("episode_id", "step")


def _build(
    tmp: Path, recipe: Recipe, data: pl.DataFrame, record: dict[str, Any], *,
    sources: pl.DataFrame, validation: dict[str, Any], quality_stats: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of a version into `tmp`; returns what the version record adds (the store writes it)."""
    steps = data.drop(SPLIT)
    features = hf_features(steps.head(0).to_arrow().schema)
    (tmp / "data").mkdir()
    splits: dict[str, dict[str, int]] = {}
    present = set(data.get_column(SPLIT).unique().to_list())
    for split in (s for s in recipe.splits if s in present):  # recipe order; empty splits are left out
        part = data.filter(pl.col(SPLIT) == split).drop(SPLIT)
        splits[split] = _write_shards(tmp / "data", split, part, features, recipe.shard_rows)
        splits[split]["episodes"] = part.get_column("episode_id").n_unique()
    download_size = sum(p.stat().st_size for p in (tmp / "data").glob("*.parquet"))

    episodes = episode_table(data)
    (tmp / "meta").mkdir()
    episodes.write_parquet(tmp / "meta" / "episodes.parquet", compression="zstd")
    specs = feature_specs(steps, feature_names(recipe))
    stats = feature_stats(steps)
    lineage = _lineage(sources, data)
    info = {
        "name": recipe.name,
        "version": record["version"],
        "content_hash": record["content_hash"],
        "total_episodes": episodes.height,
        "total_frames": data.height,
        "fps": _fps(data),
        "splits": {s: {k: v[k] for k in ("episodes", "num_examples", "shards")} for s, v in splits.items()},
        "features": specs,
        "stats": stats,
        "sources": lineage.to_dicts(),
    }
    _write_json(tmp / "meta" / "info.json", info)
    score_cols = [c for c in episodes.columns if c not in _EPISODE_BASE]
    card = render_card(
        recipe=recipe, version=record, features=features, splits=splits, download_size=download_size,
        sources=lineage, validation=validation, quality_stats=quality_stats,
        # with the episode and its instruction, for the card's table of the lowest-scoring episodes
        episode_scores=episodes.select("episode_id", *[c for c in ("language_instruction",) if c in episodes.columns],
                                       *score_cols),
        stats=stats, specs=specs,
    )
    (tmp / "README.md").write_text(card, encoding="utf-8")
    return {
        "n_episodes": episodes.height,
        "n_steps": data.height,
        "splits": {s: {"episodes": v["episodes"], "steps": v["num_examples"]} for s, v in splits.items()},
    }


def _write_shards(folder: Path, split: str, part: pl.DataFrame, features: Any, shard_rows: int) -> dict[str, int]:
    table = part.to_arrow()
    n_shards = max(1, math.ceil(part.height / shard_rows), math.ceil(table.nbytes / MAX_SHARD_BYTES))
    per_shard = math.ceil(part.height / n_shards)
    num_bytes = 0
    for i in range(n_shards):
        shard = to_hub_arrow(table.slice(i * per_shard, per_shard), features)
        num_bytes += shard.nbytes
        pq.write_table(shard, folder / f"{split}-{i:05d}-of-{n_shards:05d}.parquet", compression="zstd")
    return {"num_examples": part.height, "num_bytes": num_bytes, "shards": n_shards}


_EPISODE_BASE = ["episode_id", SPLIT, "n_steps", "duration_s", "is_terminal",
                 "language_instruction", "robot_id", "source", "source_file", "source_sha256"]


def episode_table(data: pl.DataFrame) -> pl.DataFrame:
    """One row per episode: split, length, lineage, and every column constant within each episode (the scores)."""
    cols = set(data.columns)
    base = [pl.col(SPLIT).first(), pl.len().cast(pl.Int64).alias("n_steps")]
    if "timestamp" in cols:
        base.append((pl.col("timestamp").max() - pl.col("timestamp").min()).alias("duration_s"))
    if "is_terminal" in cols:
        base.append(pl.col("is_terminal").any())
    base += [pl.col(c).first() for c in ("language_instruction", "robot_id", "source", "source_file", "source_sha256") if c in cols]
    candidates = [c for c, t in data.schema.items()
                  if c not in _STEP_LEVEL and not c.startswith("observation.") and not t.is_nested() and t != pl.Binary]
    grouped = data.group_by("episode_id", maintain_order=True).agg(
        *base, *[pl.col(c).first() for c in candidates],
        *[pl.col(c).n_unique().alias(f"_nu_{c}") for c in candidates],
    )
    constant = [c for c in candidates if grouped.get_column(f"_nu_{c}").max() <= 1]
    return grouped.drop([f"_nu_{c}" for c in candidates] + [c for c in candidates if c not in constant])


def _lineage(sources: pl.DataFrame, data: pl.DataFrame) -> pl.DataFrame:
    """Every source file of the run (source, path in its batch, sha256) and the episodes and steps it gave this version."""
    keys = [k for k in LINEAGE if k in sources.columns]
    given = sources.select(pl.col(k).cast(pl.String) for k in keys).unique()
    if set(keys) <= set(data.columns):
        used = data.group_by(keys).agg(pl.col("episode_id").n_unique().alias("episodes"), pl.len().alias("steps"))
    else:
        used = pl.DataFrame(schema={**{k: pl.String for k in keys}, "episodes": pl.UInt32, "steps": pl.UInt32})
    return (
        given.join(used.with_columns(pl.col(k).cast(pl.String) for k in keys), on=keys, how="full", coalesce=True)
        .with_columns(pl.col("episodes", "steps").fill_null(0).cast(pl.Int64))
        .sort(keys)
    )


def _fps(data: pl.DataFrame) -> float | None:
    """Control rate from the median step interval."""
    if "timestamp" not in data.columns:
        return None
    dt_ = data.select(pl.col("timestamp").diff().over("episode_id").median()).item()
    return round(1.0 / dt_, 3) if dt_ and dt_ > 0 else None


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _result(record: dict[str, Any], *, created: bool) -> PublishResult:
    return PublishResult(
        name=record["name"], version=record["version"], content_hash=record["content_hash"],
        path=Path(record["path"]), created=created, n_episodes=record["n_episodes"],
        n_steps=record["n_steps"], splits=record["splits"],
    )


def list_versions(name: str, *, root: Path | None = None) -> list[dict[str, Any]]:
    """Published versions of a dataset, oldest first by semver: each version.json plus its `path`."""
    return _store(root).list_versions(name)


def resolve_version(name: str, version: str = "latest", *, root: Path | None = None) -> dict[str, Any]:
    """The record of one version: "latest", "1.2.0" or "v1.2.0". Raises LookupError if absent."""
    return _store(root).resolve(name, version)


def download(name: str, version: str, to: Path, *, overwrite: bool = False, root: Path | None = None) -> Path:
    """Copy one version's folder to `to` (checking every file's sha256) and return `to`.

    Refuses a non-empty `to` unless `overwrite` is true. The copy is made beside
    `to` and renamed into place, so `to` is never left half-copied.
    """
    record = resolve_version(name, version, root=root)
    to = Path(to).expanduser().resolve()
    if to.exists() and (not to.is_dir() or any(to.iterdir())) and not overwrite:
        raise FileExistsError(f"{to} exists and is not empty; pass overwrite=True to replace it")
    to.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{to.name}-", dir=to.parent))
    try:
        copy = staging / "copy"
        shutil.copytree(record["path"], copy)
        _store(root).verify({**record, "path": str(copy)})
        if to.is_dir():
            shutil.rmtree(to)
        elif to.exists():
            to.unlink()
        os.rename(copy, to)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return to


def push_to_hub(path: Path, repo_id: str, token: str | None, *, private: bool = True) -> dict[str, str]:
    """Upload a published version folder to a Hub dataset repo and tag the commit `v<semver>`.

    The token comes from the caller (the pipeline reads it from the environment through
    `dg.EnvVar`) and is never logged or written. The repo's files are replaced by the folder's, so the tag
    resolves to exactly this version. Refuses a version whose tag exists already.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(path)
    try:
        record = json.loads((path / "version.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a published version folder (no readable version.json)") from exc
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {exc}") from None
    if "/" not in repo_id:
        raise ValueError(f"Hub repo id {repo_id!r} must be 'owner/name'")
    if not token:
        raise RuntimeError("no Hub token: set the HF_TOKEN environment variable to a token with write access")
    tag = f"v{record['version']}"
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    if any(ref.name == tag for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags):
        raise FileExistsError(f"{repo_id} already has tag {tag}; published versions are immutable")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=path, repo_type="dataset", delete_patterns="*",
        commit_message=f"{record['name']} {tag} ({record['content_hash'][:8]})",
    )
    api.create_tag(repo_id, tag=tag, revision=commit.oid, repo_type="dataset",
                   tag_message=f"content sha256 {record['content_hash']}")
    log.info("pushed %s %s to %s", record["name"], tag, repo_id)
    return {"repo_id": repo_id, "tag": tag, "commit": commit.oid}
