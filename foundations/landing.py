"""The landing area: batches of raw log files as they arrive from the fleet.

A landing batch is one sub-folder of `landing/` (one upload, one day's sync, one
simulator run). Batches are Dagster partitions; inside a batch, every file is
known by its SHA-256, so a re-delivered identical file is recognised and never
parsed twice.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from foundations import storage

RAW_FILES_SCHEMA = {
    "landing_batch": pl.String,
    "file": pl.String,  # path relative to the landing area
    "sha256": pl.String,
    "bytes": pl.Int64,
    "status": pl.String,  # "new", or "duplicate" when the same content landed before
    "duplicate_of": pl.String,
}

BATCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def landing_dir(batch: str | None = None) -> Path:
    base = storage.area("landing")
    return base / batch if batch else base


def list_batches() -> list[str]:
    """Landing batches present on disk, oldest name first (hidden folders are in-flight copies)."""
    return sorted(p.name for p in landing_dir().iterdir() if p.is_dir() and BATCH_NAME.match(p.name))


def batch_files(batch: str, file_glob: str) -> list[Path]:
    return sorted(p for p in landing_dir(batch).rglob(file_glob) if p.is_file())


def batch_fingerprint(batch: str, file_glob: str) -> str:
    """Cheap identity of a batch's listing (names, sizes, mtimes), used as a sensor run key."""
    digest = hashlib.sha256()
    for path in batch_files(batch, file_glob):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def scan_batch(batch: str, file_glob: str, known: pl.DataFrame | None) -> pl.DataFrame:
    """Hash every file of a batch and mark those whose content landed before.

    `known` holds earlier scans (columns of RAW_FILES_SCHEMA); a file is a
    duplicate when a "new" file of another batch, or earlier in this one, had the
    same hash.
    """
    root = landing_dir()
    rows = [
        {"file": str(p.relative_to(root)), "sha256": storage.sha256_file(p), "bytes": p.stat().st_size}
        for p in batch_files(batch, file_glob)
    ]
    if not rows:
        return pl.DataFrame(schema=RAW_FILES_SCHEMA)
    scanned = pl.DataFrame(rows, schema={"file": pl.String, "sha256": pl.String, "bytes": pl.Int64})
    earlier = (
        known.filter((pl.col("status") == "new") & (pl.col("landing_batch") != batch))
        .group_by("sha256")
        .agg(pl.col("file").first().alias("earlier_file"))
        if known is not None and known.height
        else pl.DataFrame(schema={"sha256": pl.String, "earlier_file": pl.String})
    )
    # Within the batch the first file (by name) of each hash is the original.
    first_here = scanned.group_by("sha256").agg(pl.col("file").min().alias("first_file"))
    return (
        scanned.join(earlier, on="sha256", how="left")
        .join(first_here, on="sha256", how="left")
        .with_columns(
            pl.lit(batch).alias("landing_batch"),
            pl.coalesce(
                pl.col("earlier_file"),
                pl.when(pl.col("file") != pl.col("first_file")).then(pl.col("first_file")),
            ).alias("duplicate_of"),
        )
        .with_columns(pl.when(pl.col("duplicate_of").is_null()).then(pl.lit("new")).otherwise(pl.lit("duplicate")).alias("status"))
        .select(list(RAW_FILES_SCHEMA))
        .sort("file")
    )


def new_batch_name(prefix: str = "batch") -> str:
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"


def land_files(files: list[Path], batch: str | None = None) -> str:
    """Copy files into a new landing batch atomically (hidden folder, then rename)."""
    batch = batch or new_batch_name()
    if not BATCH_NAME.match(batch):
        raise ValueError(f"batch name {batch!r} must be letters, digits, '.', '_' or '-'")
    with storage.atomic_dir(landing_dir(batch)) as tmp:
        for f in files:
            shutil.copy2(f, tmp / Path(f).name)
    return batch
