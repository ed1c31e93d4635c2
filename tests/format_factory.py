"""The same simulated episodes in every input format robocurate reads, for tests/test_formats.py.

MCAP files come from the fleet simulator. rosbag2 bags get the same CDR messages at the same
log times through rosbags' writer (sqlite3 or mcap storage); ROS 1 bags are converted from a
rosbag2 bag by rosbags' converter into ROS 1 Noetic types (headers gain `seq`). HDF5 (robomimic
layout) and LeRobot v3 folders have no topics or stamps: they are written from the steps the
MCAP ingestion kept, one row per step, each mapped field a dataset or column.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from mcap.reader import make_reader
from rosbags.convert import convert
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from foundations.ingest.mapping import SourceMapping
from foundations.schema import IMAGE_PREFIX

REPO = Path(__file__).resolve().parents[1]
ROS2_TYPES = get_typestore(Stores.ROS2_HUMBLE)


def rosbag2_from_mcap(mcap: Path, bag: Path, storage: str, camera: str | None = None) -> Path:
    """A rosbag2 bag folder holding the MCAP file's messages (raw CDR, same log times, metadata as custom data);
    `camera`: also a 4x3 sensor_msgs/Image topic of that name at 10 Hz, as fleets record beside the rest."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with open(mcap, "rb") as fh, Writer(bag, version=9, storage_plugin=plugin) as writer:
        reader = make_reader(fh)
        for record in reader.iter_metadata():
            for key, value in record.metadata.items():
                writer.set_custom_data(f"{record.name}.{key}", value)
        connections = {}
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            if channel.topic not in connections:
                connections[channel.topic] = writer.add_connection(channel.topic, schema.name, typestore=ROS2_TYPES)
            writer.write(connections[channel.topic], message.log_time, message.data)
        if camera:
            _write_camera(writer, camera, reader)
    return bag


def _write_camera(writer: Writer, topic: str, reader) -> None:
    summary = reader.get_summary()
    start, end = summary.statistics.message_start_time, summary.statistics.message_end_time
    image_type = ROS2_TYPES.types["sensor_msgs/msg/Image"]
    header_type, time_type = ROS2_TYPES.types["std_msgs/msg/Header"], ROS2_TYPES.types["builtin_interfaces/msg/Time"]
    connection = writer.add_connection(topic, "sensor_msgs/msg/Image", typestore=ROS2_TYPES)
    for t in range(start, end, 100_000_000):
        header = header_type(stamp=time_type(sec=t // 10**9, nanosec=t % 10**9), frame_id="camera")
        image = image_type(header=header, height=3, width=4, encoding="rgb8", is_bigendian=0, step=12,
                           data=np.full(36, t % 251, dtype=np.uint8))
        writer.write(connection, t, ROS2_TYPES.serialize_cdr(image, "sensor_msgs/msg/Image"))


def ros1_from_rosbag2(bag: Path, dst: Path) -> Path:
    """A ROS 1 bag converted from a rosbag2 bag by rosbags (messages migrated to ROS 1 Noetic types)."""
    convert([bag], dst, "sqlite3", 9, None, "file", None, get_typestore(Stores.ROS1_NOETIC), [], [], [], [])
    return dst


CAMERALESS = ("hdf5", "lerobot")


def variant(base: str, out_dir: Path, name: str, fmt: str, topics: dict[str, str], features=None) -> Path:
    """A mapping derived from datasets/sources/<base>.yaml: another name, `format:` and topic names (and,
    for formats that store whole features, other feature pieces)."""
    raw = yaml.safe_load((REPO / "datasets" / "sources" / f"{base}.yaml").read_text())

    def rename(node):
        if isinstance(node, dict):
            return {topics.get(k, k) if isinstance(k, str) else k: (topics.get(v, v) if k == "topic" else rename(v))
                    for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    raw = rename(raw) | {"name": name, "format": fmt}
    raw.pop("file_glob", None)
    if fmt in CAMERALESS:  # these test logs are written from canonical rows without their frames
        cameras = [p["topic"] for f, pieces in raw["features"].items() if f.startswith(IMAGE_PREFIX) for p in pieces]
        raw["features"] = {f: v for f, v in raw["features"].items() if not f.startswith(IMAGE_PREFIX)}
        raw["streams"] = {t: v for t, v in (raw.get("streams") or {}).items() if t not in cameras}
    if features is not None:
        raw["features"] = features
    path = out_dir / f"{name}.yaml"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _by_episode(rows: pl.DataFrame) -> list[pl.DataFrame]:
    return [ep.sort("step") for _, ep in rows.sort("episode_id", "step").group_by("episode_id", maintain_order=True)]


def robomimic_from_rows(rows: pl.DataFrame, mapping: SourceMapping, topics: dict[str, str], path: Path,
                        masks: dict[str, list[int]] | None = None) -> Path:
    """A robomimic HDF5 file, one demo per episode of `rows`, each mapped field stored where `mapping`
    (renamed by `topics`) reads it: a topic's field `a.b` is dataset `<topic>/a/b`, field `data` the topic itself."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "simulated", "type": 1, "env_kwargs": {}})
        for k, ep in enumerate(_by_episode(rows)):
            demo = data.create_group(f"demo_{k}")
            demo.attrs["num_samples"] = ep.height
            demo.attrs[topics[mapping.instruction.topic][2:]] = ep["language_instruction"][0]
            demo.create_dataset(topics[mapping.episode_markers.topic].lstrip("/"),
                                data=ep["is_terminal"].to_numpy().astype(np.int64))
            demo.create_dataset("rewards", data=np.zeros(ep.height))
            for feature, pieces in mapping.features.items():
                block = np.stack(ep[feature].to_list()).astype(np.float32)
                start = 0
                for p in pieces:
                    width, cols = p.width, block[:, start:start + p.width]
                    start += width
                    if p.transform is not None:
                        continue  # computed from fields another piece stores
                    where = topics[p.topic].lstrip("/")
                    if p.components is not None:
                        for j, c in enumerate(p.components):
                            _put(demo, f"{where}/{p.field.replace('.', '/')}/{c}", cols[:, j])
                    elif p.names is not None:
                        _put(demo, f"{where}/{p.field.replace('.', '/')}", cols)
                        _put(demo, f"{where}/{p.names_from.replace('.', '/')}", np.array(p.names, dtype="S"))
                    elif p.field == "data":
                        _put(demo, where, cols)
                    else:
                        _put(demo, f"{where}/{p.field.replace('.', '/')}", cols[:, 0] if p.size is None else cols)
        if masks:
            mask = f.create_group("mask")
            for label, demos in masks.items():
                mask.create_dataset(label, data=np.array([f"demo_{k}" for k in demos], dtype="S"))
    return path


def _put(group: h5py.Group, name: str, values: np.ndarray) -> None:
    if name not in group:
        group.create_dataset(name, data=values)


def lerobot_from_rows(rows: pl.DataFrame, features: list[str], fps: int, root: Path) -> Path:
    """A LeRobot v3 dataset folder (meta/info.json, meta/tasks.parquet, meta/episodes/, data/chunk-000/file-000.parquet)."""
    eps = _by_episode(rows)
    tasks = sorted({ep["language_instruction"][0] for ep in eps})
    frames = []
    index = 0
    for k, ep in enumerate(eps):
        n = ep.height
        frame = {name: pa.array([np.asarray(v, dtype=np.float32) for v in ep[name].to_list()],
                                type=pa.list_(pa.float32(), len(ep[name][0]))) for name in features}
        frame |= {
            "timestamp": pa.array(ep["timestamp"].to_numpy().astype(np.float32)),
            "frame_index": pa.array(np.arange(n, dtype=np.int64)),
            "episode_index": pa.array(np.full(n, k, dtype=np.int64)),
            "index": pa.array(np.arange(index, index + n, dtype=np.int64)),
            "task_index": pa.array(np.full(n, tasks.index(ep["language_instruction"][0]), dtype=np.int64)),
            "next.done": pa.array(ep["is_terminal"].to_numpy()),
        }
        frames.append(pa.table(frame))
        index += n
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    table = pa.concat_tables(frames)
    pq.write_table(table, root / "data" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(root / "meta" / "tasks.parquet")
    lengths = [ep.height for ep in eps]
    starts = np.cumsum([0, *lengths[:-1]])
    pq.write_table(pa.table({
        "episode_index": list(range(len(eps))), "tasks": [[ep["language_instruction"][0]] for ep in eps],
        "length": lengths, "data/chunk_index": [0] * len(eps), "data/file_index": [0] * len(eps),
        "dataset_from_index": starts.tolist(), "dataset_to_index": (starts + np.array(lengths)).tolist(),
    }), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    info = {
        "codebase_version": "v3.0", "robot_type": "simulated", "fps": fps, "total_episodes": len(eps),
        "total_frames": int(table.num_rows), "total_tasks": len(tasks), "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": {name: {"dtype": "float32", "shape": [len(rows[name][0])], "names": None} for name in features}
        | {"timestamp": {"dtype": "float32", "shape": [1], "names": None}},
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return root
