"""What happened to my files: every landed file with its outcome, episodes and reasons.

Built from the lake tables alone (raw_log_files, episodes, quarantine, episode_scores), so it
answers for any run, from the CLI or a notebook, without asking Dagster.
"""
from __future__ import annotations

import polars as pl

from foundations import landing, storage
from foundations.catalog import list_configs
from foundations.ingest import load_mapping

OUTCOMES = ("accepted", "quarantined", "duplicate", "unreadable", "pending")


def _table(name: str, schema: dict) -> pl.DataFrame:
    df = storage.read_table(name)
    return df if df is not None else pl.DataFrame(schema=schema)


def file_status() -> pl.DataFrame:
    """One row per landed file: source, landing_batch, file (path in the batch), sha256, outcome,
    duplicate_of, episodes (list of {episode_id, steps, outcome, quality_score, labels, trimmed_start_steps,
    trimmed_end_steps, absent_streams, reasons}), reasons (file-level). `absent_streams`: the optional streams
    (cameras) the episode's file lacked. `labels` are the file's own episode labels
    (robomimic mask/ filter keys such as better, okay, worse)."""
    s = pl.String
    raw = _table("raw_log_files", {"source": s, "landing_batch": s, "file": s, "sha256": s, "status": s,
                                   "duplicate_of": s})
    rows = _table("episodes", {"episode_id": s, "source_sha256": s})
    accepted = _table("validated_episodes", {"episode_id": s})
    quarantine = _table("quarantine", {"episode_id": s, "source_sha256": s, "check": s, "reason": s})
    scores = _table("episode_scores", {"episode_id": s, "quality_score": pl.Float64})
    trims = _table("ingest_trims", {"episode_id": s, "trimmed_start_steps": pl.Int32, "trimmed_end_steps": pl.Int32})
    if "absent_streams" not in trims.columns:  # lakes written before optional streams existed
        trims = trims.with_columns(pl.lit([], pl.List(pl.String)).alias("absent_streams"))
    labels = _table("ingest_labels", {"episode_id": s, "label": s}).group_by("episode_id").agg(
        pl.col("label").unique().sort().alias("labels"))  # the file's own labels (robomimic masks), beside the score

    reasons = quarantine.filter(pl.col("episode_id").is_not_null()).group_by("episode_id").agg(
        pl.format("{}: {}", "check", "reason").alias("reasons"))
    per_episode = (
        rows.group_by("source_sha256", "episode_id").agg(pl.len().alias("steps"))
        .join(accepted.select("episode_id").unique().with_columns(pl.lit(True).alias("ok")), on="episode_id", how="left")
        .join(reasons, on="episode_id", how="left")
        .join(scores.select("episode_id", "quality_score"), on="episode_id", how="left")
        .join(trims.select("episode_id", "trimmed_start_steps", "trimmed_end_steps", "absent_streams").unique("episode_id"),
              on="episode_id", how="left")
        .join(labels, on="episode_id", how="left")
        .with_columns(
            pl.when(pl.col("ok")).then(pl.lit("accepted")).when(pl.col("reasons").is_not_null())
            .then(pl.lit("quarantined")).otherwise(pl.lit("pending")).alias("outcome"),
            pl.col("reasons").fill_null([]),
            pl.col("labels").fill_null([]),
            pl.col("absent_streams").fill_null([]),
        )
    )
    # Episodes rejected at ingest (malformed markers, lost chunks) have no rows: they come from the quarantine.
    no_rows = (
        quarantine.filter(pl.col("episode_id").is_not_null())
        .join(rows.select("episode_id").unique(), on="episode_id", how="anti")
        .group_by("source_sha256", "episode_id").agg(pl.format("{}: {}", "check", "reason").alias("reasons"))
        .with_columns(pl.lit(0, pl.UInt32).alias("steps"), pl.lit("quarantined").alias("outcome"),
                      pl.lit(None, pl.Float64).alias("quality_score"), pl.lit(None, pl.Int32).alias("trimmed_start_steps"),
                      pl.lit(None, pl.Int32).alias("trimmed_end_steps"), pl.lit([], pl.List(pl.String)).alias("labels"),
                      pl.lit([], pl.List(pl.String)).alias("absent_streams"))
    )
    cols = ["source_sha256", "episode_id", "steps", "outcome", "quality_score", "labels", "trimmed_start_steps",
            "trimmed_end_steps", "absent_streams", "reasons"]
    all_eps = pl.concat([per_episode.select(cols), no_rows.select(cols)], how="vertical_relaxed").sort("episode_id")
    by_file = all_eps.group_by("source_sha256").agg(
        pl.struct(*cols[1:]).alias("episodes"),
        (pl.col("outcome") == "accepted").all().alias("all_ok"),
        (pl.col("outcome") == "pending").any().alias("any_pending"),
    )
    # A whole file rejected: "unreadable" when its bytes could not be decoded, else "quarantined" (a missing
    # topic, a field that does not fit the mapping: readable, but not this source's kind of log).
    file_reasons = quarantine.filter(pl.col("episode_id").is_null()).group_by("source_sha256").agg(
        pl.format("{}: {}", "check", "reason").alias("reasons"),
        pl.col("check").str.starts_with("unreadable").any().alias("undecodable"))
    landed = _landed_files().join(raw.select("source", "landing_batch", "file"),
                                  on=["source", "landing_batch", "file"], how="anti")
    raw = pl.concat([raw.select("source", "landing_batch", "file", "sha256", "status", "duplicate_of"), landed],
                    how="diagonal_relaxed")
    return (
        raw.join(by_file, left_on="sha256", right_on="source_sha256", how="left")
        .join(file_reasons, left_on="sha256", right_on="source_sha256", how="left")
        .with_columns(
            pl.when(pl.col("status") == "duplicate").then(pl.lit("duplicate"))
            .when(pl.col("sha256").is_null()).then(pl.lit("pending"))
            .when(pl.col("undecodable").fill_null(False)).then(pl.lit("unreadable"))
            .when(pl.col("reasons").is_not_null()).then(pl.lit("quarantined"))
            .when(pl.col("episodes").is_null() | pl.col("any_pending")).then(pl.lit("pending"))
            .when(pl.col("all_ok")).then(pl.lit("accepted"))
            .otherwise(pl.lit("quarantined")).alias("outcome"),
            pl.col("reasons").fill_null([]),
            pl.col("episodes").fill_null([]),
        )
        .select("source", "landing_batch", "file", "sha256", "outcome", "duplicate_of", "episodes", "reasons")
        .sort("source", "landing_batch", "file")
    )


def _landed_files() -> pl.DataFrame:
    """Every file in the landing area, also those of batches not scanned yet (or of unknown sources)."""
    sources = set(list_configs("sources"))
    rows = []
    for key in landing.list_batches():
        source, batch = landing.split_key(key)
        root = landing.batch_dir(key)
        glob, fmt = "*", "mcap"
        if source in sources:
            try:
                mapping = load_mapping(source)
                glob, fmt = mapping.file_glob, mapping.format
            except ValueError:  # an invalid mapping: list everything, the batch is not served
                pass
        rows += [{"source": source, "landing_batch": batch, "file": p.relative_to(root).as_posix(), "status": "pending"}
                 for p in landing.batch_files(key, glob, fmt)]
    return pl.DataFrame(rows, schema={"source": pl.String, "landing_batch": pl.String, "file": pl.String,
                                      "status": pl.String})


def summary(status: pl.DataFrame) -> pl.DataFrame:
    """Files per source and outcome."""
    return status.group_by("source", "outcome").len("files").sort("source", "outcome")
