"""Read the topics a source mapping needs from a LeRobot v3 dataset folder (format `lerobot`).

    meta/info.json  meta/tasks.parquet  meta/episodes/...  data/chunk-*/file-*.parquet

Each column of the data files is a topic (`/action`, `/observation.state`, `/next.done`): field
`data` is its value at a step, `data[i]` one element. `/task` is the step's task string (its
`task_index` looked up in meta/tasks.parquet). Steps are ordered by `episode_index` and
`frame_index`; their clock is the `timestamp` column (seconds from the episode's start). The
marker topic names the per-step terminal flag (`/next.done`); a dataset without it has no
terminal episodes (each ends truncated, RLDS `is_last` without `is_terminal`). Video features
(stored as MP4, not in the data files) are not read here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from foundations.ingest.episodic import Episode, EpisodicLog, TopicPart, assemble, missing_column
from foundations.ingest.mapping import SourceMapping
from foundations.ingest.mcap_source import FieldMismatch, UnreadableLog, topic_columns

KIND = "LeRobot"
TASK = "/task"


def read_lerobot(path: Path, mapping: SourceMapping) -> EpisodicLog:
    """Decode the topics `mapping` needs from a LeRobot v3 dataset folder (or its meta/info.json)."""
    root = Path(path)
    root = root.parents[1] if root.is_file() and root.name == "info.json" else root
    try:
        info = json.loads((root / "meta" / "info.json").read_text())
        version = str(info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise UnreadableLog(f"LeRobot codebase_version {version or 'unknown'} in meta/info.json; only v3 datasets are read")
        files = sorted((root / "data").rglob("*.parquet"))
        if not files:
            raise UnreadableLog("no data/chunk-*/file-*.parquet in the dataset")
        steps = pl.concat([pl.read_parquet(p) for p in files], how="diagonal_relaxed")
        tasks = _tasks(root / "meta" / "tasks.parquet")
    except UnreadableLog:
        raise
    except Exception as exc:  # a missing or damaged meta file or data file
        raise UnreadableLog(f"not a readable LeRobot v3 dataset: {type(exc).__name__}: {exc}") from exc
    for need in ("episode_index", "frame_index", "timestamp"):
        if need not in steps.columns:
            raise UnreadableLog(f"the data files have no {need} column (columns: {', '.join(steps.columns)})")
    if TASK.lstrip("/") not in steps.columns and "task_index" in steps.columns:
        steps = steps.with_columns(pl.col("task_index").replace_strict(tasks, default=None, return_dtype=pl.String).alias("task"))
    steps = steps.sort("episode_index", "frame_index")
    return _assemble(steps, mapping, info)


def _tasks(path: Path) -> dict[int, str]:
    """task_index -> task text; LeRobot writes the text as the pandas index of meta/tasks.parquet."""
    if not path.exists():
        return {}
    frame = pq.read_table(path).to_pandas()
    text = frame["task"] if "task" in frame.columns else frame.index.to_series()
    return {int(i): str(t) for i, t in zip(frame["task_index"], text)}


def _values(series: pl.Series) -> object:
    """A column's step values as numpy (a 2-D block for fixed-width arrays) or a list."""
    if isinstance(series.dtype, pl.Array):
        return series.to_numpy()
    if isinstance(series.dtype, pl.List):
        lengths = series.list.len().unique()
        if lengths.len() == 1 and not series.has_nulls():
            return series.list.to_array(int(lengths[0])).to_numpy()
        return series.to_list()
    if series.dtype == pl.String:
        return series.to_list()
    return series.to_numpy()


def _assemble(steps: pl.DataFrame, mapping: SourceMapping, info: dict) -> EpisodicLog:
    columns = topic_columns(mapping)
    marker = mapping.episode_markers.topic if mapping.episode_markers else None
    found = sorted(f"/{c}" for c in steps.columns)
    episodes = []
    for (index,), ep in steps.group_by("episode_index", maintain_order=True):
        clock = np.round(ep["timestamp"].cast(pl.Float64).to_numpy() * 1e9).astype(np.int64)
        clock -= clock[0] if len(clock) else 0
        topics: dict[str, TopicPart] = {}
        terminal = False
        for topic, cols in columns.items():
            name = topic.lstrip("/")
            if name not in ep.columns:
                continue
            if topic == marker:
                terminal = bool(ep[name].cast(pl.Boolean).any())
                continue
            vals = {}
            for col in cols:
                head, _, rest = col.path.partition("[")
                if head != "data":
                    raise missing_column(topic, col.path, f"{KIND} column {name}; its field is data", "data")
                values = _values(ep[name])
                if rest:
                    i = int(rest.rstrip("]"))
                    if not isinstance(values, np.ndarray) or values.ndim != 2 or i >= values.shape[1]:
                        raise FieldMismatch(topic, f"field {col.path} of {topic} indexes past the end of its values")
                    values = values[:, i]
                vals[col.path] = values
            topics[topic] = TopicPart(clock, vals)
        episodes.append(Episode(f"episode_{index}", ep.height, topics, terminal))
    metadata = {"info": {k: str(v) for k, v in info.items() if isinstance(v, (str, int, float))}}
    return assemble(episodes, mapping, columns, KIND, found, metadata)
