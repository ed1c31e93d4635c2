"""Group `ingest`: landed files with their hashes, and the canonical episode table.

The partition key `<source>/<batch>` names the source, whose mapping reads the batch.
"""

import dagster as dg
import polars as pl

from foundations import landing
from foundations.ingest import empty_result, ingest_files, load_mapping
from pipelines.metadata import md_table
from pipelines.partitions import landing_batches
from pipelines.resources import DataRoot


@dg.asset(
    group_name="ingest",
    partitions_def=landing_batches,
    description="Files of one landing batch with their SHA-256 and path inside the batch; a file whose "
    "content landed before is marked duplicate.",
    kinds={"parquet"},
)
def raw_log_files(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    key = context.partition_key
    mapping = load_mapping(landing.split_key(key)[0])
    storage = data_root.storage
    files = landing.scan_batch(key, mapping.file_glob, storage.read_table("raw_log_files"), mapping.format)
    storage.write_partition(files, "raw_log_files", key)
    dup = files.filter(pl.col("status") == "duplicate")
    return dg.MaterializeResult(
        metadata={
            "fingerprint": landing.batch_fingerprint(key, mapping.file_glob, mapping.fingerprint, mapping.format),
            "mapping_fingerprint": mapping.fingerprint,
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
    description="The canonical episode table (one row per control step) parsed from the batch's new files, "
    "with the start-up and shut-down steps trimmed where streams started or stopped at different times; "
    "files that cannot be read are quarantined with a reason.",
    kinds={"polars", "parquet"},
)
def episodes(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    key = context.partition_key
    mapping = load_mapping(landing.split_key(key)[0])
    storage = data_root.storage
    files = storage.require_partition("raw_log_files", key)
    new = files.filter(pl.col("status") == "new")
    # Rows parsed by an earlier run with the same mapping are kept; only files not parsed yet
    # (or parsed under another version of the mapping or robot profile) are parsed now.
    same_mapping = storage.read_partition("ingest_fingerprint", key)
    reuse = same_mapping is not None and same_mapping["mapping_fingerprint"].to_list() == [mapping.fingerprint]
    empty = empty_result(mapping)
    kept = {
        table: _keep(storage.read_partition(table, key) if reuse else None, new["sha256"], getattr(empty, attr))
        for table, attr in (("episodes", "episodes"), ("ingest_quarantine", "quarantine"), ("ingest_trims", "trims"),
                            ("ingest_labels", "labels"))
    }
    done = pl.concat([kept["episodes"]["source_sha256"], kept["ingest_quarantine"]["source_sha256"]]).unique()
    todo = new.filter(~pl.col("sha256").is_in(done.implode()))
    root = landing.batch_dir(key)
    paths = [root / f for f in todo["file"]]
    result = ingest_files(paths, mapping, hashes=dict(zip(map(str, paths), todo["sha256"])), batch_dir=root)
    eps = pl.concat([kept["episodes"], result.episodes], how="diagonal_relaxed")
    bad = pl.concat([kept["ingest_quarantine"], result.quarantine], how="diagonal_relaxed")
    trims = pl.concat([kept["ingest_trims"], result.trims], how="diagonal_relaxed")
    storage.write_partition(eps, "episodes", key)
    storage.write_partition(bad, "ingest_quarantine", key)
    storage.write_partition(trims, "ingest_trims", key)
    labels = pl.concat([kept["ingest_labels"], result.labels], how="diagonal_relaxed")
    storage.write_partition(labels, "ingest_labels", key)  # the file's own episode labels (robomimic masks)
    storage.write_partition(pl.DataFrame({"mapping_fingerprint": [mapping.fingerprint]}), "ingest_fingerprint", key)
    n_episodes = eps["episode_id"].n_unique()
    trimmed = trims.filter((pl.col("trimmed_start_steps") > 0) | (pl.col("trimmed_end_steps") > 0))
    # Episodes whose file lacked an optional stream (a camera): ingested without its features, never silently.
    absent = trims.filter(pl.col("absent_streams").list.len() > 0)
    context.log.info(f"batch {key}: {len(todo)} files parsed ({len(new) - len(todo)} kept from earlier runs), "
                     f"{n_episodes} episodes ({len(trimmed)} trimmed, {len(absent)} without an optional stream), "
                     f"{len(bad)} quarantine records")
    return dg.MaterializeResult(
        metadata={
            "files_parsed": len(todo),
            "reparsed_for_new_mapping": not reuse and same_mapping is not None,
            "episodes": n_episodes,
            "dagster/row_count": len(eps),
            "episodes_trimmed": len(trimmed),
            "episodes_without_optional_streams": len(absent),
            "absent_streams": md_table(absent.select("source_file", pl.col("absent_streams").list.join(", ")).unique(maintain_order=True)),
            "trims": md_table(trimmed.select("source_file", "trimmed_start_steps", "trimmed_start_s", "start_stream",
                                             "trimmed_end_steps", "trimmed_end_s", "end_stream")),
            "files_quarantined": bad.filter(pl.col("episode_id").is_null())["source_file"].n_unique(),
            "quarantine_reasons": md_table(bad.group_by("check").len().sort("len", descending=True)),
            "episode_labels": md_table(labels.group_by("label").agg(pl.col("episode_id").n_unique().alias("episodes"))
                                       .sort("label")),
        }
    )


def _keep(previous: pl.DataFrame | None, hashes: pl.Series, empty: pl.DataFrame) -> pl.DataFrame:
    if previous is None:
        return empty
    return previous.filter(pl.col("source_sha256").is_in(hashes.implode()))
