"""The landing area: batches of raw log files as they arrive from the fleet, one folder per source.

    landing/<source>/<batch>/<any/nested/path>

A batch is one upload (one day's sync, one simulator run) of one source; its source's mapping
(`datasets/sources/<source>.yaml`) says how to read it. Batches are Dagster partitions keyed
`<source>/<batch>`. A file's identity is its path relative to its batch plus its SHA-256: robots
reuse file names, so the name alone never identifies a file. A re-delivered identical file is
recognised by its hash and never parsed twice.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from foundations import storage
from foundations.catalog import list_configs
from foundations.ingest.formats import find_logs

RAW_FILES_SCHEMA = {
    "source": pl.String,
    "landing_batch": pl.String,
    "file": pl.String,  # path relative to the batch folder, '/'-separated
    "sha256": pl.String,
    "bytes": pl.Int64,
    "status": pl.String,  # "new", or "duplicate" when the same content landed before
    "duplicate_of": pl.String,  # "<source>/<batch>/<file>" of the first delivery
}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # sources and batches: visible, path-safe names
SEP = "/"


class LandingError(ValueError):
    """A landing request or a partition key that cannot be served; the message says what to fix."""


def partition_key(source: str, batch: str) -> str:
    return f"{source}{SEP}{batch}"


def split_key(key: str) -> tuple[str, str]:
    """(source, batch) of a partition key `<source>/<batch>`."""
    source, sep, batch = key.partition(SEP)
    if not sep or not NAME.match(source) or not NAME.match(batch):
        raise LandingError(f"partition key {key!r} is not '<source>/<batch>'")
    return source, batch


def landing_dir(source: str | None = None, batch: str | None = None) -> Path:
    base = storage.area("landing")
    if source is None:
        return base
    return base / source / batch if batch else base / source


def batch_dir(key: str) -> Path:
    return landing_dir(*split_key(key))


def list_batches() -> list[str]:
    """Partition keys of every batch on disk, sorted (hidden folders are copies still in flight)."""
    keys = []
    for src in sorted(p for p in landing_dir().iterdir() if p.is_dir() and NAME.match(p.name)):
        keys += [partition_key(src.name, b.name) for b in sorted(src.iterdir()) if b.is_dir() and NAME.match(b.name)]
    return keys


def batch_files(key: str, file_glob: str, fmt: str = "mcap") -> list[Path]:
    """Logs of a batch matching the source's glob, in every sub-folder, sorted by relative path;
    for a folder format (a rosbag2 bag, a LeRobot dataset) the folders the glob's matches mark."""
    return find_logs(batch_dir(key), file_glob, fmt)


def relative_name(path: Path, key: str) -> str:
    """A file's path inside its batch, '/'-separated: half of its identity."""
    return Path(path).relative_to(batch_dir(key)).as_posix()


def batch_fingerprint(key: str, file_glob: str, salt: str = "", fmt: str = "mcap") -> str:
    """Cheap identity of a batch's listing (relative paths, sizes, mtimes) and of `salt`
    (the mapping's fingerprint), used as a sensor run key: either changing re-runs the batch."""
    digest = hashlib.sha256(salt.encode())
    for path in batch_files(key, file_glob, fmt):
        inside = storage.folder_files(path) if path.is_dir() else [("", path)]
        for rel, file in inside:
            stat = file.stat()
            digest.update(f"{relative_name(path, key)}/{rel}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def scan_batch(key: str, file_glob: str, known: pl.DataFrame | None, fmt: str = "mcap") -> pl.DataFrame:
    """Hash every file of a batch and mark those whose content landed before.

    `known` holds earlier scans (columns of RAW_FILES_SCHEMA); a file is a duplicate when a
    "new" file of another batch, or earlier in this one (by relative path), had the same hash.
    """
    source, batch = split_key(key)
    files = batch_files(key, file_glob, fmt)
    if not files:
        return pl.DataFrame(schema=RAW_FILES_SCHEMA)
    scanned = pl.DataFrame(
        {"file": [relative_name(p, key) for p in files], "sha256": [storage.sha256_file(p) for p in files],
         "bytes": [storage.path_bytes(p) for p in files]},
        schema={"file": pl.String, "sha256": pl.String, "bytes": pl.Int64},
    )
    earlier = (
        known.filter((pl.col("status") == "new")
                     & ((pl.col("source") != source) | (pl.col("landing_batch") != batch)))
        .group_by("sha256")
        .agg(pl.format("{}/{}/{}", "source", "landing_batch", "file").first().alias("earlier_file"))
        if known is not None and known.height
        else pl.DataFrame(schema={"sha256": pl.String, "earlier_file": pl.String})
    )
    first_here = scanned.group_by("sha256").agg(pl.col("file").min().alias("first_file"))
    return (
        scanned.join(earlier, on="sha256", how="left")
        .join(first_here, on="sha256", how="left")
        .with_columns(
            pl.lit(source).alias("source"),
            pl.lit(batch).alias("landing_batch"),
            pl.coalesce(
                pl.col("earlier_file"),
                pl.when(pl.col("file") != pl.col("first_file")).then(pl.format(f"{key}/{{}}", "first_file")),
            ).alias("duplicate_of"),
        )
        .with_columns(pl.when(pl.col("duplicate_of").is_null()).then(pl.lit("new")).otherwise(pl.lit("duplicate")).alias("status"))
        .select(list(RAW_FILES_SCHEMA))
        .sort("file")
    )


def new_batch_name(prefix: str = "batch") -> str:
    return f"{prefix}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"


def land(paths: list[Path], source: str, batch: str | None = None) -> str:
    """Copy files and folders (with their sub-folders) into a new batch of `source`, atomically.

    A folder's contents keep their paths relative to that folder; a file lands at the top
    of the batch. Returns the partition key. The batch appears whole or not at all.
    """
    known = list_configs("sources")
    if source not in known:
        raise LandingError(f"no source {source!r}: add datasets/sources/{source}.yaml (known: {', '.join(known) or 'none'})")
    batch = batch or new_batch_name()
    if not NAME.match(batch):
        raise LandingError(f"batch name {batch!r} must be letters, digits, '.', '_' or '-'")
    if landing_dir(source, batch).exists():
        raise LandingError(f"batch {partition_key(source, batch)} exists already; landed batches are immutable, pick another name")
    plan: dict[str, Path] = {}
    for given in map(Path, paths):
        if not given.exists():
            raise LandingError(f"{given} does not exist")
        items = [(p.relative_to(given).as_posix(), p) for p in sorted(given.rglob("*")) if p.is_file()] \
            if given.is_dir() else [(given.name, given)]
        for rel, src in items:
            if rel in plan and plan[rel] != src:
                raise LandingError(f"two inputs land at {rel} ({plan[rel]} and {src}); land them as separate batches")
            plan[rel] = src
    if not plan:
        raise LandingError("nothing to land: the inputs hold no files")
    with storage.atomic_dir(landing_dir(source, batch)) as tmp:
        for rel, src in plan.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
    return partition_key(source, batch)
