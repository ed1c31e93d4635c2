"""Read the topics a source mapping needs from an HDF5 file of demonstrations (format `hdf5`), with h5py.

Two layouts (datasets/sources/README.md, "HDF5 and LeRobot"):
- robomimic: `data/<demo>/` groups (demos in natural order, demo_2 before demo_10), each with
  `actions`, `obs/<key>`, `rewards`, `dones`; `mask/<filter>` lists demo names (train, valid,
  better, okay, worse, ...): each demo's filters become its episode labels;
- D4RL: flat `observations`, `actions`, `rewards`, `terminals`, `timeouts` at the root; an
  episode ends at a step whose `terminals` or `timeouts` is set.
A topic is a path under the episode (`/actions`, `/obs/eef_pos`): a dataset (field `data` is
its row, `data[i]` one element) or a group (field `a.b` is its dataset `a/b`, as a message's
fields). A topic `/@name` is the attribute `name` of the episode's group or the nearest group
above it that has it (field `data` its value, `data.key` a key of a JSON value), one message at
the episode's first step. Rows are steps at the mapping's control rate. The marker topic names
the per-step terminal flag (robomimic `dones`, D4RL `terminals`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from foundations.ingest.episodic import Episode, EpisodicLog, TopicPart, assemble, missing_column, step_times
from foundations.ingest.mapping import SourceMapping
from foundations.ingest.mcap_source import Column, FieldMismatch, UnreadableLog, topic_columns

KIND = "HDF5"
_STEP = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")
_BOUNDARIES = ("terminals", "timeouts")  # D4RL: an episode ends where either is set


def read_hdf5(path: Path, mapping: SourceMapping) -> EpisodicLog:
    """Decode the topics `mapping` needs from a robomimic or D4RL HDF5 file."""
    try:
        handle = h5py.File(path, "r")
    except Exception as exc:  # h5py raises OSError, or others for a damaged superblock
        raise UnreadableLog(f"not a readable HDF5 file: {exc}") from exc
    with handle:
        try:
            return _read(handle, mapping)
        except (FieldMismatch, UnreadableLog):
            raise
        except Exception as exc:  # a damaged dataset or group deep in the file
            raise UnreadableLog(f"HDF5 object unreadable: {type(exc).__name__}: {exc}") from exc


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _episodes(f: h5py.File) -> tuple[list[tuple[str, h5py.Group, slice]], dict[str, list[str]]]:
    """(name, group, row slice) per episode, and robomimic's filter keys per demo name."""
    data = f.get("data")
    if isinstance(data, h5py.Group) and any(isinstance(v, h5py.Group) for v in data.values()):
        demos = sorted((k for k, v in data.items() if isinstance(v, h5py.Group)), key=_natural)
        labels: dict[str, list[str]] = {}
        mask = f.get("mask")
        if isinstance(mask, h5py.Group):
            for key in sorted(mask):
                for demo in np.asarray(mask[key][()]).ravel():
                    labels.setdefault(demo.decode() if isinstance(demo, bytes) else str(demo), []).append(key)
        return [(d, data[d], slice(None)) for d in demos], labels
    flags = [np.asarray(f[k][()]).astype(bool).ravel() for k in _BOUNDARIES if isinstance(f.get(k), h5py.Dataset)]
    rows = next((f[k].shape[0] for k in ("actions", "observations") if isinstance(f.get(k), h5py.Dataset)), None)
    if rows is None:
        raise UnreadableLog("neither a robomimic file (data/<demo> groups) nor a D4RL file (actions, observations at the root)")
    ends = np.flatnonzero(np.logical_or.reduce(flags)) + 1 if flags else np.empty(0, dtype=np.int64)
    bounds = [0, *ends.tolist()] + ([rows] if not len(ends) or ends[-1] < rows else [])
    return [(f"episode_{i}", f, slice(a, b)) for i, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a], {}


def _attribute(group: h5py.Group, name: str) -> Any:
    node: h5py.Group | None = group
    while node is not None:
        if name in node.attrs:
            value = node.attrs[name]
            value = value.decode() if isinstance(value, bytes) else value
            return value.item() if isinstance(value, np.generic) else value
        node = node.parent if node.name != "/" else None
    raise KeyError(name)


def _walk_json(value: Any, keys: list[str], topic: str, path: str) -> Any:
    if keys and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise FieldMismatch(topic, f"field {path} of {topic}: the attribute is not JSON, so it has no keys") from None
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise FieldMismatch(topic, f"field {path} of {topic}: no key {key!r} in the attribute's value")
        value = value[key]
    return value


def _rows(ds: h5py.Dataset, rows: slice, steps: int, col: Column, topic: str) -> Any:
    """A dataset's values at each step: its rows (a per-step dataset) or, for names, one static string array."""
    if ds.dtype.kind in "SOU" and ds.ndim == 1 and col.kind == "strings":
        names = [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]
        return [names] * steps
    arr = ds[rows] if ds.ndim else None
    if arr is None or arr.shape[0] != steps:
        raise FieldMismatch(topic, f"{ds.name} has {ds.shape[0] if ds.ndim else 0} rows where the episode has {steps} steps")
    if arr.dtype.kind in "SO":
        decode = np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])
        arr = decode(arr)
        return arr.tolist() if col.kind == "strings" else list(arr)
    return arr


def _column(node: h5py.Group | h5py.Dataset, col: Column, rows: slice, steps: int, topic: str) -> Any:
    steps_ = [(name, None if name else int(index)) for name, index in _STEP.findall(col.path)]
    names = [n for n, _ in steps_ if n]
    indexes = [i for n, i in steps_ if not n]
    if isinstance(node, h5py.Dataset):
        if names != ["data"]:
            raise missing_column(topic, col.path, f"{KIND} dataset {node.name}; its field is data", "data")
        ds = node
    else:
        ds = node.get("/".join(names))
        if not isinstance(ds, h5py.Dataset):
            raise missing_column(topic, col.path, f"{KIND} group {node.name}", ", ".join(sorted(node)))
    values = _rows(ds, rows, steps, col, topic)
    for index in indexes:  # `data[3]`: one element of each step's row
        if not isinstance(values, np.ndarray) or values.ndim < 2 or index >= values.shape[1]:
            width = values.shape[1] if isinstance(values, np.ndarray) and values.ndim > 1 else 0
            raise FieldMismatch(topic, f"field {col.path} of {topic} indexes past the end of its rows ({width} values)")
        values = values[:, index]
    return values


def _read(f: h5py.File, mapping: SourceMapping) -> EpisodicLog:
    columns = topic_columns(mapping)
    spec = mapping.episode_markers
    marker = spec.topic if spec is not None else None
    found: set[str] = set()
    episodes: list[Episode] = []
    demos, labels = _episodes(f)
    for name, group, rows in demos:
        control = group.get(mapping.control.topic.lstrip("/"))
        if not isinstance(control, h5py.Dataset):
            found |= _topics(group)
            continue  # no control steps: the missing topic is reported by ingestion
        steps = control[rows].shape[0] if control.ndim else 0
        clock = step_times(steps, mapping.control.rate_hz)
        topics: dict[str, TopicPart] = {}
        terminal = False
        for topic, cols in columns.items():
            if topic == marker:
                flag = group.get(topic.lstrip("/"))
                if isinstance(flag, h5py.Dataset):
                    terminal = bool(np.asarray(flag[rows]).astype(bool).any())
                    found.add(topic)
                continue
            if topic.startswith("/@"):
                try:
                    value = _attribute(group, topic[2:])
                except KeyError:
                    continue
                found.add(topic)
                vals = {}
                for col in cols:
                    head, _, rest = col.path.partition(".")
                    if head != "data":
                        raise missing_column(topic, col.path, f"{KIND} attribute {topic[2:]}; its field is data", "data")
                    vals[col.path] = [_walk_json(value, rest.split(".") if rest else [], topic, col.path)]
                topics[topic] = TopicPart(clock[:1], vals)
                continue
            node = group.get(topic.lstrip("/"))
            if node is None:
                continue
            found.add(topic)
            topics[topic] = TopicPart(clock, {c.path: _column(node, c, rows, steps, topic) for c in cols})
        episodes.append(Episode(name, steps, topics, terminal, labels.get(name, [])))
        found |= _topics(group) if len(episodes) == 1 else set()
    metadata = {"attrs": {k: str(v) for k, v in f.attrs.items()}}
    if isinstance(f.get("data"), h5py.Group):
        metadata["attrs"] |= {k: str(v) for k, v in f["data"].attrs.items()}
    return assemble(episodes, mapping, columns, KIND, sorted(found), metadata)


def _topics(group: h5py.Group) -> set[str]:
    """Every dataset and group path under an episode, as topics (for 'found:' in reasons)."""
    names: set[str] = {f"/@{k}" for k in group.attrs}
    group.visit(lambda name: names.add(f"/{name}"))
    return names
