"""The canonical episode table: one row per control step.

Names follow LeRobot and RLDS. Every stage reads and writes this schema; extra
`observation.*` features declared by a source mapping (for example the base pose
used for progress scores) are appended after the canonical columns.
"""
from __future__ import annotations

import polars as pl
import pyarrow as pa

STATE = "observation.state"
POSE = "observation.pose"  # [x, y, yaw] of the base in the odometry frame
ACTION = "action"
IMAGE_PREFIX = "observation.images."  # camera features: one encoded frame (PNG or JPEG) per step, binary

EPISODE_SCHEMA = pa.schema(
    [
        pa.field("episode_id", pa.string(), nullable=False),
        pa.field("step", pa.int32(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=False),
        pa.field(STATE, pa.list_(pa.float32())),
        pa.field(ACTION, pa.list_(pa.float32())),
        pa.field("reward", pa.float32(), nullable=True),
        pa.field("is_first", pa.bool_(), nullable=False),
        pa.field("is_last", pa.bool_(), nullable=False),
        pa.field("is_terminal", pa.bool_(), nullable=False),
        pa.field("language_instruction", pa.string()),
        pa.field("robot_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_sha256", pa.string()),
    ]
)

POLARS_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String,
    "step": pl.Int32,
    "timestamp": pl.Float64,
    STATE: pl.List(pl.Float32),
    ACTION: pl.List(pl.Float32),
    "reward": pl.Float32,
    "is_first": pl.Boolean,
    "is_last": pl.Boolean,
    "is_terminal": pl.Boolean,
    "language_instruction": pl.String,
    "robot_id": pl.String,
    "source": pl.String,
    "source_file": pl.String,
    "source_sha256": pl.String,
}

# A file's identity everywhere: its source, its path relative to the landing batch, its content hash.
LINEAGE = ("source", "source_file", "source_sha256")

# Episode-level rejections, from unreadable files to failed expectations.
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String,  # null when the whole file could not be read
    "source": pl.String,  # the source (datasets/sources/<source>.yaml) whose landing area held the file
    "source_file": pl.String,  # path relative to the landing batch: with source_sha256, the file's identity
    "source_sha256": pl.String,
    "stage": pl.String,  # "ingest" or "validation"
    "check": pl.String,  # short machine name, e.g. "missing_topic", "finite_values"
    "reason": pl.String,  # one readable sentence saying what is wrong and where
}


def empty_episodes() -> pl.DataFrame:
    return pl.DataFrame(schema=POLARS_SCHEMA)


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def episode_id(source_sha256: str, index: int) -> str:
    """Stable id: the same file and episode index always give the same id."""
    return f"{source_sha256[:16]}-{index:03d}"
