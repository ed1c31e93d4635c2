"""A published version as a LeRobot v3.0 dataset folder, which `LeRobotDataset(repo_id, root=folder)` loads.

Layout (LeRobot's `codebase_version` v3.0):

    meta/info.json                        codebase_version, fps, features (dtype, shape, names), paths, splits
    meta/stats.json                       per-feature mean, std, min, max, q01, q99, count
    meta/tasks.parquet                    one row per instruction (index: the task, column task_index)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: where its frames are, its length, its
                                          task, plus robocurate's episode_id, split, lineage and scores
    data/chunk-000/file-NNN.parquet       one row per step; whole episodes per file, files of about 100 MB

Camera frames stay the published encoded frames, stored in the Parquet rows as `image` features
(LeRobot decodes them with PIL), so nothing is re-encoded and no video codec is needed.
Step features: `observation.*` vectors and `action` as published, `timestamp` (seconds since the
episode's first step), `frame_index`, `episode_index`, `index`, `task_index`, `next.reward` (the
chosen reward column; left out when no column has a reward on every step), `next.done` (RLDS
`is_last`) and the RLDS flags `is_first`, `is_last`, `is_terminal`. Episodes are ordered by split,
and info.json's `splits` gives each split's episode range, as LeRobot writes it ("0:40").
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from foundations.dataset_card import jsonable
from foundations.export.published import FLAGS, Published
from foundations.feature_stats import feature_stats
from foundations.recipes import SPLIT

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder, as LeRobot writes
DATA_FILE_MB = 100  # LeRobot's default data file size
VIDEO_FILE_MB = 200  # LeRobot's default; declared though no feature is a video
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_STATS_FRAMES = 256  # frames per camera decoded for its per-channel statistics (evenly spaced)


def write_lerobot(pub: Published, folder: Path) -> dict[str, Any]:
    """Write the LeRobot folder into `folder` (empty); returns what was exported and what was left out."""
    vectors, images, left_out = pub.columns()
    frames, tasks = _frames(pub, vectors, images)
    features = _features(pub, frames, vectors, images)

    file_of = _file_index(frames, images)
    episodes = _episode_meta(pub, frames, file_of, tasks)
    hf = _hf_features(features)
    for file_index in np.unique(file_of):
        rows = frames.filter(pl.col("episode_index").is_in(np.flatnonzero(file_of == file_index).tolist()))
        path = folder / DATA_PATH.format(chunk_index=int(file_index) // CHUNKS_SIZE,
                                         file_index=int(file_index) % CHUNKS_SIZE)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_arrow(rows.select(list(features)), hf, images), path, compression="snappy")

    meta = folder / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True)
    episodes.write_parquet(folder / EPISODES_PATH)
    pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(tasks, name="task")) \
        .to_parquet(meta / "tasks.parquet")
    stats = _stats(frames.select(c for c in features if features[c]["dtype"] not in ("image", "bool", "string")))
    stats.update({c: _image_stats(frames.get_column(c)) for c in images})
    _write_json(meta / "stats.json", stats)
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": None,  # a robot model in LeRobot's sense; the published rows name robots, not models
        "total_episodes": episodes.height,
        "total_frames": frames.height,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": _fps(pub.fps),
        "splits": _split_ranges(pub.episodes),
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
        "robocurate": _provenance(pub, left_out),
    }
    _write_json(meta / "info.json", info)
    (folder / "README.md").write_text(_readme(pub, info), encoding="utf-8")
    return {"episodes": episodes.height, "frames": frames.height, "left_out": left_out, "reward": pub.reward}


def _frames(pub: Published, vectors: list[str], images: list[str]) -> tuple[pl.DataFrame, list[str]]:
    """The step table in LeRobot's names and types; the tasks in order of first appearance."""
    steps = pub.steps.with_columns(pub.instructions.alias("_task"))
    tasks = steps.get_column("_task").unique(maintain_order=True).to_list()
    cols = [
        pl.col(vectors), pl.col(images),
        (pl.col("timestamp") - pl.col("timestamp").first().over("episode_index")).cast(pl.Float32).alias("timestamp"),
        pl.int_range(pl.len()).over("episode_index").cast(pl.Int64).alias("frame_index"),
        pl.col("episode_index"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("index"),
        pl.col("_task").replace_strict({t: i for i, t in enumerate(tasks)}, return_dtype=pl.Int64).alias("task_index"),
    ]
    if pub.reward is not None:
        cols.append(pl.col(pub.reward).cast(pl.Float32).alias("next.reward"))
    cols += [pl.col("is_last").alias("next.done"), *[pl.col(f) for f in FLAGS]]
    return steps.select(cols), tasks


def _features(pub: Published, frames: pl.DataFrame, vectors: list[str], images: list[str]) -> dict[str, dict]:
    features: dict[str, dict[str, Any]] = {}
    for col in frames.columns:
        if col in vectors:
            spec = pub.spec(col)
            features[col] = {"dtype": str(frames.schema[col].inner).lower(), "shape": list(spec["shape"]),
                             "names": spec.get("names")}
        elif col in images:
            features[col] = {"dtype": "image", "shape": list(pub.spec(col)["shape"]),
                             "names": ["height", "width", "channels"]}
        else:
            dtype = frames.schema[col]
            features[col] = {"dtype": "bool" if dtype == pl.Boolean else str(dtype).lower(), "shape": [1],
                             "names": None}
    return features


def _hf_features(features: dict[str, dict]) -> Any:
    """The `datasets.Features` LeRobot derives from the features (get_hf_features_from_features)."""
    import datasets

    out = {}
    for key, ft in features.items():
        if ft["dtype"] == "image":
            out[key] = datasets.Image()
        elif ft["shape"] == [1]:
            out[key] = datasets.Value(ft["dtype"])
        else:
            out[key] = datasets.Sequence(length=ft["shape"][0], feature=datasets.Value(ft["dtype"]))
    return datasets.Features(out)


def _arrow(rows: pl.DataFrame, hf: Any, images: list[str]) -> pa.Table:
    """Rows in the Arrow types of `hf` (vectors as fixed-size lists, frames as {bytes, path}), with its metadata."""
    table = rows.to_arrow()
    arrays = []
    for field in hf.arrow_schema:
        col = table.column(field.name).combine_chunks()
        if field.name in images:
            col = pa.StructArray.from_arrays([col.cast(pa.binary()), pa.nulls(len(col), pa.string())],
                                             names=["bytes", "path"])
        arrays.append(col.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=hf.arrow_schema)


def _file_index(frames: pl.DataFrame, images: list[str]) -> np.ndarray:
    """Data file of each episode: whole episodes, a new file each DATA_FILE_MB of (uncompressed) rows."""
    numeric = frames.drop(images).estimated_size() / max(frames.height, 1)
    sizes = frames.group_by("episode_index", maintain_order=True).agg(
        (pl.len() * numeric + pl.sum_horizontal([pl.col(c).bin.size().sum() for c in images] or [pl.lit(0)]))
        .alias("bytes")).sort("episode_index").get_column("bytes").to_numpy()
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    return (before // (DATA_FILE_MB * 1024 * 1024)).astype(np.int64)


def _episode_meta(pub: Published, frames: pl.DataFrame, file_of: np.ndarray, tasks: list[str]) -> pl.DataFrame:
    """LeRobot's episode columns, then robocurate's (episode_id, split, lineage, scores)."""
    spans = frames.group_by("episode_index", maintain_order=True).agg(
        pl.col("index").min().alias("dataset_from_index"), (pl.col("index").max() + 1).alias("dataset_to_index"),
        pl.col("task_index").unique(maintain_order=True).alias("_tasks"))
    ours = [c for c in pub.episodes.columns if c not in ("episode_index", "length")]
    return (
        pub.episodes.select("episode_index", "length", *ours).join(spans, on="episode_index", how="left")
        .sort("episode_index")
        .with_columns(
            pl.col("_tasks").list.eval(pl.element().replace_strict(dict(enumerate(tasks)), return_dtype=pl.String))
            .alias("tasks"),
            pl.Series("data/chunk_index", file_of // CHUNKS_SIZE, pl.Int64),
            pl.Series("data/file_index", file_of % CHUNKS_SIZE, pl.Int64),
            pl.lit(0, pl.Int64).alias("meta/episodes/chunk_index"),
            pl.lit(0, pl.Int64).alias("meta/episodes/file_index"),
        )
        .select("episode_index", "tasks", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index", "meta/episodes/chunk_index", "meta/episodes/file_index", *ours)
    )


def _stats(numeric: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """foundations.feature_stats over every exported row, with LeRobot's `count` (a one-element list)."""
    return {col: {**s, "count": [s["count"]]} for col, s in feature_stats(numeric).items()}


def _image_stats(frames: pl.Series) -> dict[str, Any]:
    """Per-channel statistics in [0, 1], shaped (C, 1, 1) as LeRobot keeps them, over evenly spaced frames."""
    from PIL import Image

    picks = np.unique(np.linspace(0, frames.len() - 1, min(IMAGE_STATS_FRAMES, frames.len())).astype(np.int64))
    pixels = []
    for i in picks.tolist():  # bounded: at most IMAGE_STATS_FRAMES decodes per camera
        if frames[i] is not None:
            with Image.open(io.BytesIO(frames[i])) as img:
                pixels.append(np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0)
    if not pixels:
        return {}
    flat = np.concatenate(pixels)
    q01, q99 = np.quantile(flat, [0.01, 0.99], axis=0)
    per_channel = {"mean": flat.mean(0), "std": flat.std(0), "min": flat.min(0), "max": flat.max(0),
                   "q01": q01, "q99": q99}
    return {**{k: v.reshape(3, 1, 1).tolist() for k, v in per_channel.items()}, "count": [len(pixels)]}


def _fps(fps: float | None) -> float | int | None:
    """LeRobot declares an integer rate: the published median rate (20.001 Hz from jittered stamps) is
    rounded when within 1 % of an integer; a truly fractional control rate (12.5 Hz) is kept."""
    if not fps:
        return None
    return int(round(fps)) if abs(fps - round(fps)) <= 0.01 * fps else fps


def _split_ranges(episodes: pl.DataFrame) -> dict[str, str]:
    ranges = episodes.group_by(SPLIT, maintain_order=True).agg(
        pl.col("episode_index").min().alias("lo"), pl.col("episode_index").max().alias("hi"))
    return {r[SPLIT]: f"{r['lo']}:{r['hi'] + 1}" for r in ranges.iter_rows(named=True)}


def _provenance(pub: Published, left_out: dict[str, str]) -> dict[str, Any]:
    return {
        "name": pub.name, "version": pub.version, "content_hash": pub.record["content_hash"],
        "code_version": pub.record.get("code_version"),
        "reward": pub.reward or "none: no reward column has a value on every step, so next.reward is left out",
        "left_out": left_out,
        "episode_columns": "meta/episodes holds each episode's robocurate episode_id, split, lineage and scores",
    }


def _readme(pub: Published, info: dict[str, Any]) -> str:
    left = "".join(f"\n- `{c}`: {why}" for c, why in info["robocurate"]["left_out"].items())
    return (
        f"# {pub.name} v{pub.version} (LeRobot v3.0 export)\n\n"
        f"Exported by robocurate from {pub.name} v{pub.version} (content hash `{pub.record['content_hash']}`): "
        f"{info['total_episodes']} episodes, {info['total_frames']} frames at {info['fps']} fps; splits "
        f"{info['splits']}.\n\n"
        "```python\nfrom lerobot.datasets.lerobot_dataset import LeRobotDataset\n"
        f'ds = LeRobotDataset("robocurate/{pub.name}", root="<this folder>")\n```\n\n'
        f"Reward (`next.reward`): {info['robocurate']['reward']}.\n"
        + (f"\nLeft out:{left}\n" if left else "")
    )


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n", encoding="utf-8")

