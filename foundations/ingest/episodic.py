"""Logs without topics or stamps (HDF5 demos, LeRobot episodes) in the `McapLog` layout.

Such a file holds many episodes, each a table of steps. Its reader gives, per episode, each
topic's step times (ns from the episode's first step) and field values; `assemble` lays the
episodes end to end on one clock (a second apart), writes the mapping's episode markers (start
before the first step, end after the last, terminal at the last when the episode's terminal flag
is set) and builds the frames, so alignment, validation and lineage run unchanged. Episode `k`
of the file is interval `k` of alignment, hence `episode_labels[k]` labels episode id `k`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from foundations.ingest.frames import check_kind, topic_frame
from foundations.ingest.mapping import SourceMapping
from foundations.ingest.mcap_source import Column, FieldMismatch, McapLog

GAP_NS = 1_000_000_000  # between consecutive episodes on the file's clock: no tolerance bridges it


@dataclass
class EpisodicLog(McapLog):
    """An `McapLog` whose episodes come from the file's structure, with labels per episode."""

    episode_labels: list[list[str]] = field(default_factory=list)  # by episode index in the file
    episode_names: list[str] = field(default_factory=list)  # the file's name of each episode (demo_3)


@dataclass
class TopicPart:
    """One topic's messages in one episode: times (ns from the episode's first step) and a value sequence per column."""

    times: np.ndarray
    values: dict[str, Sequence[Any]]


@dataclass
class Episode:
    name: str
    steps: int
    topics: dict[str, TopicPart]  # topics found in this episode (the marker topic excluded)
    terminal: bool = False
    labels: list[str] = field(default_factory=list)


def step_times(steps: int, rate_hz: float) -> np.ndarray:
    """The control clock of a file without stamps: step i at i / rate_hz seconds."""
    return np.round(np.arange(steps, dtype=np.float64) * (1e9 / rate_hz)).astype(np.int64)


def assemble(episodes: list[Episode], mapping: SourceMapping, columns: dict[str, list[Column]], kind: str,
             topics_found: list[str], metadata: dict[str, dict[str, str]]) -> EpisodicLog:
    """One log of `episodes` laid end to end, with the mapping's markers written per episode."""
    spec = mapping.episode_markers
    times: dict[str, list[np.ndarray]] = {}
    values: dict[str, dict[str, list[Sequence[Any]]]] = {}  # topic -> path -> one value sequence per episode
    marks: list[tuple[int, str]] = []
    offset = 0
    for ep in episodes:
        if not ep.steps:
            continue
        last = 0
        for topic, part in ep.topics.items():
            times.setdefault(topic, []).append(part.times + offset)
            cols = values.setdefault(topic, {})
            for path, vals in part.values.items():
                cols.setdefault(path, []).append(vals)
            if len(part.times):
                last = max(last, int(part.times.max()))
        if spec is not None:
            marks += [(offset - 1, spec.start), (offset + last + 1, spec.end)]
            if ep.terminal and spec.terminal is not None:
                marks.append((offset + last, spec.terminal))
        offset += last + GAP_NS
    frames: dict[str, pl.DataFrame] = {}
    for topic, parts in times.items():
        cols = [c for c in columns.get(topic, []) if c.path in values[topic]]
        joined = [_join(values[topic][c.path]) for c in cols]
        for col, vals in zip(cols, joined):
            if len(vals):
                check_kind(topic, col, vals[0], kind)
        frames[topic] = topic_frame(np.concatenate(parts), cols, joined)
    messages = sum(f.height for f in frames.values())
    if spec is not None:
        marks.sort()
        text = Column(spec.field, "text")
        frames[spec.topic] = topic_frame([t for t, _ in marks], [text], [[m for _, m in marks]])
        topics_found = sorted({*topics_found, spec.topic})
    kept = [ep for ep in episodes if ep.steps]
    return EpisodicLog(frames, {t: kind for t in topics_found}, topics_found, metadata, messages,
                       episode_labels=[ep.labels for ep in kept], episode_names=[ep.name for ep in kept])


def _join(parts: list[Sequence[Any]]) -> Sequence[Any]:
    """Episodes' values of one column as one sequence: a numpy concatenation when every part is an array of one width."""
    arrays = [p for p in parts if isinstance(p, np.ndarray)]
    if len(arrays) == len(parts) and len({a.shape[1:] for a in arrays}) == 1:
        return np.concatenate(arrays)
    return [v for part in parts for v in (list(part) if isinstance(part, np.ndarray) else part)]


def missing_column(topic: str, path: str, kind: str, found: str) -> FieldMismatch:
    return FieldMismatch(topic, f"field {path} not in {topic} ({kind}; it has: {found or 'nothing'})")
