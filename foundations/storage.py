"""The data root and its layout, with atomic writes.

Every path the pipeline touches comes from here, so that one place changes when
the root moves to object storage.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator
import shutil
import tempfile
import uuid
from pathlib import Path

import polars as pl

HASH_CHUNK = 1 << 20


ROOT_ENV = "ROBOCURATE_HOME"
_root_override: ContextVar[Path | None] = ContextVar("robocurate_data_root", default=None)


def data_root() -> Path:
    """The data root: the one set by `using_root` (the Dagster resource does), else
    `$ROBOCURATE_HOME`, else `.robocurate/` under the working directory."""
    root = _root_override.get() or Path(os.environ.get(ROOT_ENV, ".robocurate")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def using_root(path: str | Path) -> Iterator[Path]:
    """Within this block (this thread or task), every path comes from `path`."""
    token = _root_override.set(Path(path).expanduser().resolve())
    try:
        yield data_root()
    finally:
        _root_override.reset(token)


def area(name: str) -> Path:
    """One of landing, lake, quarantine, hub, checkpoints, cache (created on demand)."""
    path = data_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def lake_table(table: str) -> Path:
    """Folder of one lake table; partitions are `<partition>.parquet` files inside it."""
    path = area("lake") / table
    path.mkdir(parents=True, exist_ok=True)
    return path


def partition_path(table: str, partition: str) -> Path:
    """`lake/<table>/<partition>.parquet`; a key `<source>/<batch>` becomes a sub-folder per source."""
    return lake_table(table) / f"{partition}.parquet"


def write_partition(df: pl.DataFrame, table: str, partition: str) -> Path:
    """Write one partition of a lake table atomically (replacing an earlier write)."""
    path = partition_path(table, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp, compression="zstd", statistics=True)
    os.replace(tmp, path)
    return path


STAGED_SUFFIX = "_staged"


def staged(table: str) -> str:
    """Name of the lake table where a table's partitions wait for their gates (`<table>_staged`)."""
    return f"{table}{STAGED_SUFFIX}"


def stage_partition(df: pl.DataFrame, table: str, partition: str) -> Path:
    """Write a partition where readers of `table` do not look until `promote_partition`."""
    return write_partition(df, staged(table), partition)


def staged_snapshot(table: str, partition: str) -> bytes:
    """The bytes of a staged partition: gates judge exactly these, and exactly these get promoted,
    so a file rewritten while the gates run can never slip through."""
    path = partition_path(staged(table), partition)
    if not path.exists():
        raise FileNotFoundError(f"{table} has nothing staged for {partition!r}: materialize its staging asset first")
    return path.read_bytes()


def promote_partition(table: str, partition: str, snapshot: bytes) -> Path:
    """Make a staged snapshot the visible partition of `table`, atomically: readers see the earlier
    promoted file or the new one, never a mix. The staged copy stays for audits."""
    path = partition_path(table, partition)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(snapshot)
    os.replace(tmp, path)
    return path


def read_partition(table: str, partition: str) -> pl.DataFrame | None:
    path = partition_path(table, partition)
    return pl.read_parquet(path) if path.exists() else None


def require_partition(table: str, partition: str) -> pl.DataFrame:
    """A partition an asset depends on; a clear error says which asset to materialize first."""
    df = read_partition(table, partition)
    if df is None:
        raise FileNotFoundError(f"{table} has no partition {partition!r} yet: materialize {table} for it first")
    return df


def read_table(table: str) -> pl.DataFrame | None:
    """All partitions of a lake table, or None when nothing was written yet."""
    files = sorted(lake_table(table).rglob("*.parquet"))
    if not files:
        return None
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def sha256_file(path: Path) -> str:
    """Content hash of a file, or of a folder that is one log (a rosbag2 bag, a LeRobot dataset):
    the hash of its files' relative paths and hashes, hidden paths left out (copies in flight)."""
    path = Path(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for rel, file in folder_files(path):
            digest.update(f"{rel}\0{sha256_file(file)}\n".encode())
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(POSIX path relative to `folder`, path) of every file under it, sorted, hidden paths left out."""
    folder = Path(folder)
    files = ((p.relative_to(folder), p) for p in folder.rglob("*") if p.is_file())
    return sorted((rel.as_posix(), p) for rel, p in files if not any(part.startswith(".") for part in rel.parts))


def path_bytes(path: Path) -> int:
    """Size of a file, or the total size of a folder's files."""
    path = Path(path)
    return sum(p.stat().st_size for _, p in folder_files(path)) if path.is_dir() else path.stat().st_size


def atomic_dir(final: Path) -> "AtomicDir":
    return AtomicDir(final)


class AtomicDir:
    """Build a directory under a hidden temporary name and rename it into place.

    A crash before `__exit__` leaves only a hidden `.tmp-*` folder, never a
    half-written `final`; `final` must not exist yet (versions are immutable).
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.final.exists():
            raise FileExistsError(f"{self.final} exists already; published folders are immutable")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.final.name}-", dir=self.final.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is None:
            os.rename(self.tmp, self.final)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
