"""Group `ingest`: landed files with their hashes, and the canonical episode table."""

import dagster as dg
import polars as pl

from foundations import landing, storage
from foundations.ingest.ingest import ingest_files
from pipelines.metadata import md_table
from foundations.ingest.mapping import load_mapping
from pipelines.partitions import landing_batches
from foundations.schema import empty_episodes, empty_quarantine


class IngestConfig(dg.Config):
    """Which source mapping (datasets/sources/<mapping>.yaml) reads this landing batch."""

    mapping: str = "ant_fleet_ros2"


@dg.asset(
    group_name="ingest",
    partitions_def=landing_batches,
    description="Files of one landing batch with their SHA-256; a file whose content landed before is marked duplicate.",
    kinds={"parquet"},
)
def raw_log_files(context: dg.AssetExecutionContext, config: IngestConfig) -> dg.MaterializeResult:
    batch = context.partition_key
    mapping = load_mapping(config.mapping)
    files = landing.scan_batch(batch, mapping.file_glob, storage.read_table("raw_log_files"))
    storage.write_partition(files, "raw_log_files", batch)
    dup = files.filter(pl.col("status") == "duplicate")
    return dg.MaterializeResult(
        metadata={
            "fingerprint": landing.batch_fingerprint(batch, mapping.file_glob),
            "files": len(files),
            "new_files": len(files) - len(dup),
            "duplicate_files": len(dup),
            "bytes": int(files["bytes"].sum() or 0),
            "duplicates": md_table(dup.select("file", "duplicate_of")),
        }
    )


@dg.asset(
    group_name="ingest",
    partitions_def=landing_batches,
    deps=[raw_log_files],
    description="The canonical episode table (one row per control step) parsed from the batch's new files; "
    "files that cannot be read are quarantined with a reason.",
    kinds={"polars", "parquet"},
)
def episodes(context: dg.AssetExecutionContext, config: IngestConfig) -> dg.MaterializeResult:
    batch = context.partition_key
    mapping = load_mapping(config.mapping)
    files = storage.require_partition("raw_log_files", batch)
    new = files.filter(pl.col("status") == "new")
    # Rows parsed by an earlier run of this partition are kept; only files not seen yet are parsed.
    kept_eps = _keep(storage.read_partition("episodes", batch), new["sha256"], empty_episodes())
    kept_bad = _keep(storage.read_partition("ingest_quarantine", batch), new["sha256"], empty_quarantine())
    done = pl.concat([kept_eps["source_sha256"], kept_bad["source_sha256"]]).unique()
    todo = new.filter(~pl.col("sha256").is_in(done.implode()))
    paths = [landing.landing_dir() / f for f in todo["file"]]
    result = ingest_files(paths, mapping, hashes=dict(zip(map(str, paths), todo["sha256"])))
    eps = pl.concat([kept_eps, result.episodes], how="diagonal_relaxed")
    bad = pl.concat([kept_bad, result.quarantine], how="diagonal_relaxed")
    storage.write_partition(eps, "episodes", batch)
    storage.write_partition(bad, "ingest_quarantine", batch)
    n_episodes = eps["episode_id"].n_unique()
    context.log.info(f"batch {batch}: {len(todo)} files parsed ({len(new) - len(todo)} kept from earlier runs), {n_episodes} episodes, {len(bad)} files quarantined")
    return dg.MaterializeResult(
        metadata={
            "files_parsed": len(todo),
            "episodes": n_episodes,
            "dagster/row_count": len(eps),
            "files_quarantined": len(bad),
            "quarantine_reasons": md_table(bad.group_by("check").len().sort("len", descending=True)),
        }
    )



def _keep(previous: pl.DataFrame | None, hashes: pl.Series, empty: pl.DataFrame) -> pl.DataFrame:
    if previous is None:
        return empty
    return previous.filter(pl.col("source_sha256").is_in(hashes.implode()))
