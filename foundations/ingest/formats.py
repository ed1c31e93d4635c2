"""Log formats a source mapping's `format:` may name, and the reader of each.

A reader is `read(path: Path, mapping: SourceMapping) -> McapLog` (the decoded topics a mapping
needs, one frame per topic; see `foundations.ingest.mcap_source.McapLog`). It raises
`UnreadableLog` when the file cannot be read and `FieldMismatch` when a mapped field does not
fit the messages. Readers are named by import path so that validating a mapping does not
import every decoder; adding a format is one line here plus its module.

Some logs are folders (a rosbag2 bag: metadata.yaml beside its .db3/.mcap files; a LeRobot
dataset): `file_glob` then matches the folder's own marker file and the log is that folder,
hashed and identified as a whole (`log_path`). Some formats record no episode markers (HDF5
demos, LeRobot episodes): their readers write the mapping's `episode_markers` themselves.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

READERS: dict[str, str] = {
    "mcap": "foundations.ingest.mcap_source:read_mcap",  # ROS 2 MCAP, CDR decoded by mcap-ros2-support
    "rosbag2": "foundations.ingest.rosbag_source:read_rosbag2",  # a bag folder, sqlite3 or mcap storage (rosbags)
    "ros1": "foundations.ingest.rosbag_source:read_ros1",  # a ROS 1 .bag file (rosbags)
    "hdf5": "foundations.ingest.hdf5_source:read_hdf5",  # robomimic or D4RL layout (h5py)
    "lerobot": "foundations.ingest.lerobot_source:read_lerobot",  # a LeRobot v3 dataset folder (pyarrow)
}
FORMATS: tuple[str, ...] = tuple(READERS)
# Formats whose log is a folder; `file_glob` matches a file at a fixed depth inside it.
FOLDER_FORMATS = frozenset({"rosbag2", "lerobot"})
# Formats whose readers synthesise the episode markers from the file's own episode structure.
READER_MARKED = frozenset({"hdf5", "lerobot"})
DEFAULT_GLOBS = {"mcap": "*.mcap", "rosbag2": "metadata.yaml", "ros1": "*.bag", "hdf5": "*.hdf5",
                 "lerobot": "meta/info.json"}


def reader_for(fmt: str) -> Callable[..., Any]:
    """The read function of a format; ValueError listing the known formats for another name."""
    if fmt not in READERS:
        raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    module, _, name = READERS[fmt].partition(":")
    return getattr(import_module(module), name)


def log_path(match: Path, fmt: str, file_glob: str) -> Path:
    """The log a `file_glob` match stands for: the file itself, or for a folder format the folder
    it marks (`metadata.yaml` marks its parent; `meta/info.json` the parent of `meta/`)."""
    return match.parents[file_glob.strip("/").count("/")] if fmt in FOLDER_FORMATS else match


def find_logs(root: Path, file_glob: str, fmt: str) -> list[Path]:
    """Every log under `root` (any depth), sorted by relative path: files matching `file_glob`,
    or for a folder format the folders they mark; hidden paths (copies in flight) left out."""
    root = Path(root)
    logs = {
        log_path(p, fmt, file_glob) for p in root.rglob(file_glob)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
    return sorted(logs, key=lambda p: p.relative_to(root).as_posix())
