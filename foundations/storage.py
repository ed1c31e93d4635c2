"""The data root and its layout (DESIGN.md section 3), with atomic writes.

Every path the pipeline touches comes from here, so that one place changes when
the root moves to object storage.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import polars as pl

HASH_CHUNK = 1 << 20


def data_root() -> Path:
    """`$ROBOCURATE_HOME`, default `.robocurate/` under the working directory."""
    root = Path(os.environ.get("ROBOCURATE_HOME", ".robocurate")).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


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


def write_partition(df: pl.DataFrame, table: str, partition: str) -> Path:
    """Write one partition of a lake table atomically (replacing an earlier write)."""
    path = lake_table(table) / f"{partition}.parquet"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    df.write_parquet(tmp, compression="zstd", statistics=True)
    os.replace(tmp, path)
    return path


def read_partition(table: str, partition: str) -> pl.DataFrame | None:
    path = lake_table(table) / f"{partition}.parquet"
    return pl.read_parquet(path) if path.exists() else None


def require_partition(table: str, partition: str) -> pl.DataFrame:
    """A partition an asset depends on; a clear error says which asset to materialize first."""
    df = read_partition(table, partition)
    if df is None:
        raise FileNotFoundError(f"{table} has no partition {partition!r} yet: materialize {table} for it first")
    return df


def read_table(table: str) -> pl.DataFrame | None:
    """All partitions of a lake table, or None when nothing was written yet."""
    files = sorted(lake_table(table).glob("*.parquet"))
    if not files:
        return None
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
