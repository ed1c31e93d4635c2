"""The dataset card (README.md) of a published version, with the YAML header the Hub reads.

The header declares the splits' Parquet files (`configs`), the features
(`dataset_info`, written by `datasets` itself so the format matches the installed
version), licence, task category and tags, plus a `robocurate` block with the
version, content hash and every source file's sha256. The body records lineage,
the recipe, code version, validation results, quality and feature statistics.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import yaml

from foundations.recipes import Recipe

if TYPE_CHECKING:
    import datasets

TAGS = ["robocurate"]
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def jsonable(value: Any) -> Any:
    """Plain JSON/YAML types for summaries that may hold numpy, polars, paths or dates."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, pl.DataFrame):
        return jsonable(value.to_dicts())
    if isinstance(value, (pl.Series, np.ndarray)):
        return jsonable(value.to_list() if isinstance(value, pl.Series) else value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return str(value)
    return repr(value)


def size_category(n_rows: int) -> str:
    return next((label for bound, label in _SIZES if n_rows < bound), "n>1B")


def card_header(
    *, recipe: Recipe, version: dict[str, Any], features: "datasets.Features",
    splits: dict[str, dict[str, int]], download_size: int, sources: pl.DataFrame,
) -> dict[str, Any]:
    """The YAML header as a dict (see module docstring)."""
    import datasets
    from datasets.splits import SplitDict, SplitInfo

    split_dict = SplitDict({name: SplitInfo(name=name, num_bytes=s["num_bytes"], num_examples=s["num_examples"])
                            for name, s in splits.items()})
    info = datasets.DatasetInfo(features=features, splits=split_dict, download_size=download_size,
                                dataset_size=sum(s["num_bytes"] for s in splits.values()))
    n_rows = sum(s["num_examples"] for s in splits.values())
    return {
        "license": recipe.license,
        "task_categories": ["robotics"],
        "tags": TAGS,
        "pretty_name": recipe.name,
        "size_categories": [size_category(n_rows)],
        "configs": [{
            "config_name": "default",
            "default": True,
            "data_files": [{"split": name, "path": f"data/{name}-*.parquet"} for name in splits],
        }],
        "dataset_info": info._to_yaml_dict(),
        "robocurate": {
            "name": recipe.name,
            "version": version["version"],
            "content_hash": version["content_hash"],
            "parent_version": version.get("parent_version"),
            "code_version": version.get("code_version"),
            "sources": [{"source": r.get("source"), "file": r["source_file"], "sha256": r["source_sha256"]}
                        for r in sources.iter_rows(named=True)],
        },
    }


def render_card(
    *, recipe: Recipe, version: dict[str, Any], features: "datasets.Features",
    splits: dict[str, dict[str, int]], download_size: int, sources: pl.DataFrame,
    validation: dict[str, Any], quality_stats: dict[str, Any], episode_scores: pl.DataFrame,
    stats: dict[str, dict[str, Any]], specs: dict[str, dict[str, Any]],
) -> str:
    """README.md text: YAML header between `---` lines, then the body."""
    header = card_header(recipe=recipe, version=version, features=features, splits=splits,
                         download_size=download_size, sources=sources)
    ver, name = version["version"], recipe.name
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {name} v{ver}", "",
        recipe.description or "",
        "",
        f"Published by robocurate on {version['created_at']}. Content hash `{version['content_hash']}` "
        f"(sha256 over the rows sorted by episode_id, step; see `foundations/content_hash.py`).",
        "",
        "| split | episodes | steps |", "|---|---:|---:|",
        *[f"| {s} | {v['episodes']} | {v['num_examples']} |" for s, v in splits.items()],
        "",
        *([f"Recipe splits with no episode in this version: {', '.join(empty)}.", ""]
          if (empty := [s for s in recipe.splits if s not in splits]) else []),
        "## Loading", "",
        "```python", "from datasets import load_dataset",
        f'ds = load_dataset("<this folder or hub repo>", revision="v{ver}")  # revision only on the Hub',
        "```", "",
        "Layout: Hugging Face Parquet shards `data/<split>-NNNNN-of-NNNNN.parquet`, one row per control step "
        "with LeRobot feature names (`observation.state`, `action`, `observation.images.<camera>` as "
        "`datasets.Image`) and RLDS step flags (`is_first`, `is_last`, `is_terminal`); "
        "`meta/info.json` (features, shapes, element names, normalisation statistics), "
        "`meta/episodes.parquet` (one row per episode with its scores and split), `version.json`. "
        "This is not a LeRobot or Minari dataset folder; robocurate exports one:",
        "",
        "```bash",
        f"robocurate export {name} --version {ver} --format lerobot --to DIR   # LeRobotDataset(repo_id, root=DIR)",
        f"robocurate export {name} --version {ver} --format minari --to ROOT   # MINARI_DATASETS_PATH=ROOT, "
        "minari.load_dataset(...)",
        "```",
        "",
        "## Lineage", "",
        f"- code version: `{version.get('code_version')}`",
        f"- parent version: {('v' + version['parent_version']) if version.get('parent_version') else 'none (first version)'}",
        f"- source files: {sources.height}", "",
        "| source | file (path in its landing batch) | sha256 | episodes | steps |", "|---|---|---|---:|---:|",
        *[f"| {_cell(r.get('source') or '')} | {_cell(r['source_file'])} | `{r['source_sha256']}` | {r['episodes']} | {r['steps']} |"
          for r in sources.iter_rows(named=True)],
        "",
        "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", "",
        "## Validation", "", "```yaml", _yaml_block(validation), "```", "",
        "## Quality", "", "Quality statistics of the run:", "", "```yaml", _yaml_block(quality_stats), "```", "",
        *_score_table(episode_scores),
        *_lowest_table(episode_scores),
        *_trim_summary(episode_scores, recipe),
        "## Features", "",
        *_camera_lines(specs),
        "Per-feature summary over all published steps; for vectors, the mean and std columns average the "
        "per-element values and min/max span all elements (element-wise statistics are in `meta/info.json`).", "",
        "| feature | dtype | shape | mean | std | min | max |", "|---|---|---|---:|---:|---:|---:|",
        *[_feature_row(col, spec, stats.get(col)) for col, spec in specs.items()],
        "",
    ]
    return "\n".join(lines)


def _yaml_block(value: Any) -> str:
    data = jsonable(value)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip() if data else "{}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.4g}"


def _score_table(episode_scores: pl.DataFrame) -> list[str]:
    """Distribution of each numeric score column over the published episodes."""
    cols = [c for c, t in episode_scores.schema.items() if t.is_numeric() and t != pl.Boolean]
    if not cols:
        return []
    desc = episode_scores.select(
        pl.concat_list([pl.col(c).cast(pl.Float64).mean(), pl.col(c).cast(pl.Float64).min(),
                        pl.col(c).cast(pl.Float64).median(), pl.col(c).cast(pl.Float64).max()]).alias(c)
        for c in cols
    ).row(0, named=True)
    rows = [f"| {c} | {' | '.join(_num(v) for v in desc[c])} |" for c in cols]
    return ["Per-episode scores of the published episodes:", "",
            "| score | mean | min | median | max |", "|---|---:|---:|---:|---:|", *rows, ""]


LOWEST_ROWS = 10  # lowest-scoring episodes listed in the card


def _lowest_table(episode_scores: pl.DataFrame) -> list[str]:
    """The lowest-scoring published episodes and the component that lowered each most, so a
    curator can agree or disagree at a glance (needs quality_score and explanation columns)."""
    need = {"episode_id", "quality_score", "explanation"}
    if not need <= set(episode_scores.columns) or episode_scores.is_empty():
        return []
    rows = episode_scores.filter(pl.col("quality_score").is_not_null()).sort("quality_score", "episode_id").head(LOWEST_ROWS)
    has_instruction = "language_instruction" in rows.columns
    head = "| episode | " + ("instruction | " if has_instruction else "") + "quality_score | why it is low |"
    lines = [f"The {rows.height} lowest-scoring episodes and the component that lowered each score most "
             "(weight x (1 - value)):", "", head, "|---|" + ("---|" if has_instruction else "") + "---:|---|"]
    for r in rows.iter_rows(named=True):
        instruction = f" {_cell(r['language_instruction'] or '')} |" if has_instruction else ""
        lines.append(f"| {_cell(r['episode_id'])} |{instruction} {_num(r['quality_score'])} | {_cell(r['explanation'] or '')} |")
    return [*lines, ""]


def _trim_summary(episode_scores: pl.DataFrame, recipe: Recipe) -> list[str]:
    """How many leading and trailing idle steps the published episodes had, and whether the recipe dropped them."""
    cols = ("idle_start_steps", "idle_start_s", "idle_end_steps", "idle_end_s")
    if not set(cols) <= set(episode_scores.columns) or episode_scores.is_empty():
        return []
    t = episode_scores.select(
        pl.len().alias("episodes"),
        ((pl.col("idle_start_steps") > 0) | (pl.col("idle_end_steps") > 0)).sum().alias("with_idle"),
        *[pl.col(c).sum() for c in cols],
    ).row(0, named=True)
    verb = "were dropped (recipe `filters.trim_idle: true`)" if recipe.filters.trim_idle else \
        "are kept (recipe `filters.trim_idle: false`; set it to true to drop them)"
    return [f"Idle ends: {t['with_idle']} of {t['episodes']} episodes start or end with idle steps "
            f"({t['idle_start_steps']} steps, {t['idle_start_s']:.1f} s at the starts; {t['idle_end_steps']} steps, "
            f"{t['idle_end_s']:.1f} s at the ends); they {verb}. Per episode: idle_start_steps, idle_start_s, "
            "idle_end_steps, idle_end_s in `meta/episodes.parquet`.", ""]


def _camera_lines(specs: dict[str, dict[str, Any]]) -> list[str]:
    """One line naming the camera features (encoded frames, `datasets.Image`) and their frame shapes."""
    cams = [f"`{col}` ({'×'.join(map(str, spec['shape'])) if spec.get('shape') else 'shape unknown'})"
            for col, spec in specs.items() if spec.get("dtype") == "image"]
    if not cams:
        return []
    return [f"Cameras: {', '.join(cams)}: one encoded frame (JPEG or PNG, as logged) per step, declared as "
            "`datasets.Image()`, so indexing a row decodes it to a PIL image; frames have no normalisation "
            "statistics.", ""]


def _feature_row(col: str, spec: dict[str, Any], stat: dict[str, Any] | None) -> str:
    shape = "variable" if spec.get("shape") is None else "×".join(map(str, spec["shape"]))
    if stat is None:
        return f"| {_cell(col)} | {spec['dtype']} | {shape} | | | | |"
    finite = lambda key: [v for v in stat[key] if v is not None]  # noqa: E731
    mean = float(np.mean(finite("mean"))) if finite("mean") else None
    std = float(np.mean(finite("std"))) if finite("std") else None
    lo = min(finite("min")) if finite("min") else None
    hi = max(finite("max")) if finite("max") else None
    return f"| {_cell(col)} | {spec['dtype']} | {shape} | {_num(mean)} | {_num(std)} | {_num(lo)} | {_num(hi)} |"
