"""Conservation of landed files: every file on disk accounted for exactly once.

An auditor's count, kept independent of the code it audits: the batch folder is listed and
hashed here (not by `foundations.landing`), and each landed file, identified by its path in the
batch and its sha256, must have exactly one outcome in the tables:

- duplicate: the scan marked it a re-delivery of content that landed before;
- rejected whole: quarantine records without an episode id, and no episode;
- episodes: one or more episodes, each either accepted or quarantined (never both, never
  neither), and every accepted episode carries exactly the rows that were ingested for it.

Anything in the tables that names a file not on disk (deleted, or changed after ingest) is
extra. Every problem is one readable line that names the file.
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

from foundations.ingest.formats import find_logs
from foundations.storage import sha256_file

KEY = ["file", "sha256"]
PROBLEM_SCHEMA = {"file": pl.String, "problem": pl.String}
OUTCOME_SCHEMA = {"file": pl.String, "sha256": pl.String, "outcome": pl.String, "episodes": pl.UInt32,
                  "accepted": pl.UInt32, "quarantined": pl.UInt32}


def landed_files(batch_dir: Path, file_glob: str, fmt: str = "mcap") -> pl.DataFrame:
    """(file, sha256) of every log under the batch folder matching the glob, hidden paths left out
    (a copy in flight); a log of a folder format (a rosbag2 bag, a LeRobot dataset) is its folder,
    hashed whole. Hashed here on purpose: the scan being audited must not count itself."""
    root = Path(batch_dir)
    paths = find_logs(root, file_glob, fmt)
    return pl.DataFrame(
        {"file": [p.relative_to(root).as_posix() for p in paths], "sha256": [sha256_file(p) for p in paths]},
        schema={"file": pl.String, "sha256": pl.String},
    )


def _say(template: str, *args) -> pl.Expr:
    return pl.format(template, *args).alias("problem")


def _lineage(df: pl.DataFrame | None) -> pl.DataFrame:
    schema = {"episode_id": pl.String, "file": pl.String, "sha256": pl.String}
    if df is None or df.is_empty():
        return pl.DataFrame(schema=schema)
    return df.select("episode_id", pl.col("source_file").alias("file"), pl.col("source_sha256").alias("sha256"))


def account_for_files(
    landed: pl.DataFrame,
    raw: pl.DataFrame | None,
    episodes: pl.DataFrame | None,
    accepted: pl.DataFrame | None,
    quarantine: pl.DataFrame | None,
    delivered_before: pl.Series | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(outcomes, problems): one outcome row per landed file (OUTCOME_SCHEMA; outcome is
    duplicate, rejected, episodes or missing) and one row per problem (PROBLEM_SCHEMA), empty
    when every file is accounted for exactly once.

    `raw` holds the batch's scan (file, sha256, status); `episodes`, `accepted` and `quarantine`
    the batch's rows with their lineage columns (source_file, source_sha256); `delivered_before`
    the hashes first delivered by other batches. A file counts as a duplicate only when its content
    was delivered before: by another batch, or by a file of this batch earlier in path order on disk.
    """
    raw = raw if raw is not None else pl.DataFrame(schema={"file": pl.String, "sha256": pl.String, "status": pl.String})
    ingested, acc, quar = _lineage(episodes), _lineage(accepted), _lineage(quarantine)
    whole = quar.filter(pl.col("episode_id").is_null()).select(KEY).unique()
    quar_ids = quar.filter(pl.col("episode_id").is_not_null()).unique()
    ids = pl.concat([ingested.unique(), quar_ids, acc.unique()]).unique()
    per_episode = ids.with_columns(
        pl.col("episode_id").is_in(ingested["episode_id"].implode()).alias("ingested"),
        pl.col("episode_id").is_in(acc["episode_id"].implode()).alias("is_accepted"),
        pl.col("episode_id").is_in(quar_ids["episode_id"].implode()).alias("is_quarantined"),
    )
    problems = [
        per_episode.filter(pl.col("is_accepted") & pl.col("is_quarantined")).select(
            "file", _say("doubled: episode {} of {} is both accepted and quarantined", "episode_id", "file")),
        per_episode.filter(~pl.col("is_accepted") & ~pl.col("is_quarantined")).select(
            "file", _say("missing: episode {} of {} is neither accepted nor quarantined", "episode_id", "file")),
        per_episode.filter(pl.col("is_accepted") & ~pl.col("ingested")).select(
            "file", _say("extra: accepted episode {} of {} was never ingested", "episode_id", "file")),
        ids.group_by("episode_id").agg(pl.col("file").sort()).filter(pl.col("file").list.len() > 1).select(
            pl.col("file").list.first(),
            _say("doubled: episode {} is attributed to several files ({})", "episode_id", pl.col("file").list.join(", "))),
    ]
    if accepted is not None and episodes is not None and not accepted.is_empty():
        rows = accepted.group_by("episode_id").agg(
            pl.len().alias("rows"), pl.col("step").n_unique().alias("steps"), pl.col("source_file").first().alias("file"))
        expected = episodes.group_by("episode_id").agg(pl.len().alias("ingested_rows"))
        problems.append(rows.join(expected, on="episode_id", how="left").filter(
            (pl.col("rows") != pl.col("steps")) | (pl.col("rows") != pl.col("ingested_rows").fill_null(0))
        ).select("file", _say("{}: accepted episode {} of {} has {} rows for {} distinct steps, {} ingested",
                                   pl.when(pl.col("rows") > pl.col("ingested_rows").fill_null(0)).then(pl.lit("doubled"))
                                   .otherwise(pl.lit("missing")), "episode_id", "file", "rows", "steps",
                                   pl.col("ingested_rows").fill_null(0))))

    counts = per_episode.group_by(KEY).agg(
        pl.len().cast(pl.UInt32).alias("episodes"),
        pl.col("is_accepted").sum().cast(pl.UInt32).alias("accepted"),
        pl.col("is_quarantined").sum().cast(pl.UInt32).alias("quarantined"),
    )
    dup = raw.filter(pl.col("status") == "duplicate").select(KEY).unique().with_columns(pl.lit(True).alias("duplicate"))
    marked = (
        pl.concat([counts.select(KEY), whole, dup.select(KEY), raw.select(KEY)]).unique()
        .join(counts, on=KEY, how="left").join(dup, on=KEY, how="left")
        .join(whole.with_columns(pl.lit(True).alias("whole")), on=KEY, how="left")
        .with_columns(pl.col("episodes", "accepted", "quarantined").fill_null(0),
                      pl.col("duplicate", "whole").fill_null(False), pl.lit(True).alias("in_tables"))
    )
    files = landed.with_columns(pl.lit(True).alias("on_disk")).join(marked, on=KEY, how="full", coalesce=True).with_columns(
        pl.col("on_disk", "in_tables", "duplicate", "whole").fill_null(False),
        pl.col("episodes", "accepted", "quarantined").fill_null(0),
    )
    short = pl.col("sha256").str.slice(0, 12)
    before = delivered_before if delivered_before is not None else pl.Series(dtype=pl.String)
    first_here = landed.group_by("sha256").agg(pl.col("file").min().alias("first_file"))
    claims = files.filter(pl.col("duplicate") & pl.col("on_disk")).join(first_here, on="sha256", how="left")
    problems += [
        claims.filter(~pl.col("sha256").is_in(before.implode()) & (pl.col("first_file") == pl.col("file"))).select(
            "file", _say("missing: {} (sha256 {}…) is marked duplicate but its content was not delivered before; "
                         "it was never parsed", "file", short)),
        files.filter(pl.col("on_disk") & ~pl.col("duplicate") & ~pl.col("whole") & (pl.col("episodes") == 0)).select(
            "file", _say("missing: {} (sha256 {}…) landed but is accounted for nowhere: not a duplicate, not "
                              "quarantined, no episode", "file", short)),
        files.filter(~pl.col("on_disk")).select(
            "file", _say("extra: {} (sha256 {}…) is in the outcome tables but not on disk (deleted or changed "
                              "after ingest)", "file", short)),
        files.filter(pl.col("duplicate") & (pl.col("whole") | (pl.col("episodes") > 0))).select(
            "file", _say("doubled: {} is marked duplicate yet has {} episode(s) or quarantine records", "file", "episodes")),
    ]
    outcome = (
        pl.when(~pl.col("on_disk")).then(pl.lit("extra"))
        .when(pl.col("duplicate")).then(pl.lit("duplicate"))
        .when(pl.col("episodes") > 0).then(pl.lit("episodes"))
        .when(pl.col("whole")).then(pl.lit("rejected"))
        .otherwise(pl.lit("missing"))
    )
    outcomes = files.select("file", "sha256", outcome.alias("outcome"), "episodes", "accepted", "quarantined").sort("file")
    found = pl.concat([p.rename(dict(zip(p.columns, PROBLEM_SCHEMA))).cast(PROBLEM_SCHEMA) for p in problems])
    return outcomes.cast(OUTCOME_SCHEMA), found.unique(maintain_order=True).sort("file")
