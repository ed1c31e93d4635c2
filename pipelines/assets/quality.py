"""Group `quality`: Great Expectations validation, the quarantine, and per-episode quality scores.

Validation is staged, then promoted: `staged_validation` writes the accepted rows and quarantine
records where no reader looks; `validated_episodes` / `quarantine` run the blocking gates on those
bytes (the suite again, and a conservation count from the landed files) and publish exactly them
only when every gate passed. A failed gate keeps the batch's earlier promoted state.
"""

import hashlib
import io
from typing import Optional

import dagster as dg
import polars as pl

from foundations import landing
from foundations.ingest import load_mapping
from foundations.schema import empty_quarantine
from pipelines.assets.ingest import episodes
from pipelines.metadata import md_table, png_metadata
from pipelines.partitions import landing_batches
from pipelines.resources import DataRoot
from quality.conservation import account_for_files, landed_files
from quality.thumbnails import camera_columns, thumbnail_strips_png
from quality.scores import TRIM_COLUMNS, lowest_scores, score_episodes, score_histogram_png
from quality.validation import check_accepted, validate_episodes


class ValidationConfig(dg.Config):
    min_steps: int = 20
    max_steps: int = 10_000


# Tables a batch's validation writes: staged first, promoted to these names once every gate passed.
GATED = ["validated_episodes", "quarantine"]


@dg.asset(
    name="staged_validation",
    group_name="quality",
    deps=[episodes],
    partitions_def=landing_batches,
    description="The GX suite run over the batch's episodes: accepted rows and quarantine records written to "
    "lake/validated_episodes_staged and lake/quarantine_staged, where nothing downstream reads them until "
    "the blocking checks of validated_episodes pass on them and promote them.",
    kinds={"great_expectations", "parquet"},
)
def validate_batch(context: dg.AssetExecutionContext, config: ValidationConfig, data_root: DataRoot) -> dg.MaterializeResult:
    batch = context.partition_key
    mapping = load_mapping(landing.split_key(batch)[0])
    storage = data_root.storage
    table = storage.require_partition("episodes", batch)
    report = validate_episodes(
        table,
        rate_hz=mapping.control.rate_hz,
        action_bounds=mapping.action_bounds,
        min_steps=config.min_steps,
        max_steps=config.max_steps,
        image_shapes=mapping.image_shapes,
    )
    file_rejects = storage.read_partition("ingest_quarantine", batch)
    quarantined = pl.concat(
        [file_rejects if file_rejects is not None else empty_quarantine(), report.rejected], how="diagonal_relaxed"
    )
    storage.stage_partition(report.accepted, "validated_episodes", batch)
    storage.stage_partition(quarantined, "quarantine", batch)
    counts = {
        "ingested": table["episode_id"].n_unique(),
        "accepted": report.accepted["episode_id"].n_unique(),
        "quarantined": report.rejected["episode_id"].drop_nulls().n_unique(),
    }
    context.log.info(f"batch {batch} staged: {counts}")
    return dg.MaterializeResult(
        metadata={
            **_camera_strips(table, report.rejected, batch),
            **{f"episodes_{k}": v for k, v in counts.items()},
            "dagster/row_count": len(report.accepted),
            "expectations": md_table(pl.DataFrame(report.summary["expectations"])),
            # The gates re-run the suite with these, on the staged files as they are on disk.
            "min_steps": config.min_steps,
            "max_steps": config.max_steps,
            "staged_sha256": dg.MetadataValue.json(
                {t: storage.sha256_file(storage.partition_path(storage.staged(t), batch)) for t in GATED}),
        }
    )


def _camera_strips(table: pl.DataFrame, rejected: pl.DataFrame, batch: str) -> dict[str, dg.MetadataValue]:
    """A strip of thumbnails per episode for each camera, quarantined episodes first with their first check."""
    outcomes = dict(rejected.drop_nulls("episode_id").group_by("episode_id", maintain_order=True)
                    .agg(pl.col("check").first()).iter_rows())
    metadata: dict[str, dg.MetadataValue] = {}
    for column in camera_columns(table):
        png = thumbnail_strips_png(table, column, outcomes)
        if png is not None:
            metadata |= png_metadata(png, f"{column.removeprefix('observation.')}_{batch.replace('/', '_')}")
    return metadata


def _staging_params(context: dg.AssetExecutionContext, batch: str) -> dict:
    """The validation config the staging step recorded for this batch (defaults when it recorded none)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=validate_batch.key, asset_partitions=[batch]), limit=1
    ).records
    metadata = records[0].asset_materialization.metadata if records else {}
    defaults = ValidationConfig()
    return {k: metadata[k].value if k in metadata else getattr(defaults, k) for k in ("min_steps", "max_steps")}


def expectations_gate(batch: str, accepted: pl.DataFrame, params: dict) -> dg.AssetCheckResult:
    """The GX suite re-run on the staged accepted rows as they are on disk."""
    mapping = load_mapping(landing.split_key(batch)[0])
    passed, details = check_accepted(
        accepted, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds, **params,
        image_shapes=mapping.image_shapes,
        allow_empty=True,  # a batch of re-delivered files has nothing new to accept
    )
    failed = [e["name"] for e in details["expectations"] if not e["success"]]
    return dg.AssetCheckResult(
        asset_key="validated_episodes",
        check_name="expectations_pass",
        passed=passed,
        description=details.get("description") or ("all expectations pass" if passed else ", ".join(failed)),
        metadata={"rows_checked": len(accepted), "failed_expectations": ", ".join(failed) or "none", **params},
    )


def _delivered_before(storage, batch: str) -> pl.Series:
    """Hashes first delivered by other batches (whose own promotion passed this same count)."""
    source, name = landing.split_key(batch)
    raw = storage.read_table("raw_log_files")
    if raw is None:
        return pl.Series("sha256", [], dtype=pl.String)
    other = (pl.col("source") != source) | (pl.col("landing_batch") != name)
    return raw.filter(other & (pl.col("status") == "new"))["sha256"].unique()


def conservation_gate(storage, batch: str, staged: dict[str, pl.DataFrame]) -> dg.AssetCheckResult:
    """Every landed file on disk accounted for exactly once by the staged outcome tables."""
    mapping = load_mapping(landing.split_key(batch)[0])
    outcomes, problems = account_for_files(
        landed_files(landing.batch_dir(batch), mapping.file_glob, mapping.format),
        storage.read_partition("raw_log_files", batch),
        storage.read_partition("episodes", batch),
        staged["validated_episodes"],
        staged["quarantine"],
        _delivered_before(storage, batch),
    )
    by_outcome = dict(outcomes.group_by("outcome").len().sort("outcome").iter_rows())
    shown = "; ".join(problems["problem"].head(5))
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    return dg.AssetCheckResult(
        asset_key="validated_episodes",
        check_name="every_file_accounted_for",
        passed=problems.is_empty(),
        description=f"all {len(outcomes)} landed files accounted for" if problems.is_empty() else shown + more,
        metadata={**{f"files_{k}": v for k, v in by_outcome.items()}, "problems": md_table(problems)},
    )


@dg.multi_asset(
    outs={
        "validated_episodes": dg.AssetOut(
            group_name="quality",
            description="Rows of the episodes that passed every expectation of the GX suite, promoted from "
            "staged_validation only after this asset's blocking checks passed on the staged files. Publishing "
            "reads these; a failed check leaves the earlier promoted partition in place.",
            kinds={"great_expectations", "parquet"},
            is_required=False,  # a failed gate promotes nothing: downstream assets are skipped
        ),
        "quarantine": dg.AssetOut(
            group_name="quality",
            description="Rejected files and episodes, one row per failed check, each with a readable reason "
            "(promoted together with validated_episodes).",
            kinds={"parquet"},
            is_required=False,
        ),
    },
    deps=[validate_batch],
    partitions_def=landing_batches,
    check_specs=[
        dg.AssetCheckSpec(
            "expectations_pass",
            asset="validated_episodes",
            blocking=True,
            description="The GX suite, re-run on the staged accepted rows as written on disk, passes on every "
            "row; otherwise nothing is promoted and nothing downstream runs.",
        ),
        dg.AssetCheckSpec(
            "every_file_accounted_for",
            asset="validated_episodes",
            blocking=True,
            description="Counted from the files on disk (landing/<source>/<batch>/ matching the mapping's "
            "file_glob, hashed): each is a duplicate, rejected whole, or one or more episodes each accepted or "
            "quarantined; nothing missing, nothing doubled, nothing in the tables that is not on disk.",
        ),
    ],
)
def promote_validation(context: dg.AssetExecutionContext, data_root: DataRoot):
    """Run the gates on the staged files, then promote them only when every gate passed.

    The gates read what is on disk (staged tables, landing files), not what the staging step
    computed; a failed gate leaves the earlier promoted partitions in place, still published.
    """
    batch = context.partition_key
    storage = data_root.storage
    snapshots = {t: storage.staged_snapshot(t, batch) for t in GATED}
    staged = {t: pl.read_parquet(io.BytesIO(data)) for t, data in snapshots.items()}
    gates = [
        expectations_gate(batch, staged["validated_episodes"], _staging_params(context, batch)),
        conservation_gate(storage, batch, staged),
    ]
    yield from gates
    failed = [g.check_name for g in gates if not g.passed]
    if failed:
        context.log.error(f"{batch}: gates {', '.join(failed)} failed; nothing promoted, the earlier "
                          "validated_episodes and quarantine of this batch stay published")
        return
    for table, data in snapshots.items():
        storage.promote_partition(table, batch, data)
    seen = {t: hashlib.sha256(data).hexdigest() for t, data in snapshots.items()}
    accepted, quarantined = staged["validated_episodes"], staged["quarantine"]
    context.log.info(f"batch {batch}: promoted {accepted['episode_id'].n_unique()} accepted episodes")
    yield dg.MaterializeResult(
        asset_key="validated_episodes",
        metadata={"episodes": accepted["episode_id"].n_unique(), "dagster/row_count": len(accepted),
                  "staged_sha256": dg.MetadataValue.json(seen)},
    )
    yield dg.MaterializeResult(
        asset_key="quarantine",
        metadata={
            "episodes_quarantined": quarantined["episode_id"].drop_nulls().n_unique(),
            "files_quarantined": quarantined.filter(pl.col("episode_id").is_null())["source_file"].n_unique(),
            "dagster/row_count": len(quarantined),
            "reasons_by_check": md_table(quarantined.group_by("stage", "check").len().sort("len", descending=True)),
            "examples": md_table(quarantined.select("source_file", "check", "reason"), max_rows=10),
        },
    )


class ScoreConfig(dg.Config):
    """None: the shipped score model combines the components (quality.score_model). A mapping (even
    empty): their weighted mean instead, these weights overriding quality.scores.DEFAULT_WEIGHTS."""

    weights: Optional[dict[str, float]] = None


@dg.asset(
    group_name="quality",
    partitions_def=landing_batches,
    deps=["validated_episodes"],
    description="Per-episode quality in [0, 1]: progress toward the instruction, what the robot did over "
    "time (on task, the instructed skill rather than another, efficiency, pauses, consistency), smoothness, "
    "idle time, saturation and completeness, combined into the estimated probability that a competent operator "
    "produced the episode (monotone boosted trees; or a weighted mean of given weights), and the component that lowered "
    "each score most. Also writes `idle_trims`: each episode's leading and trailing idle steps.",
    kinds={"polars", "parquet"},
)
def episode_scores(context: dg.AssetExecutionContext, config: ScoreConfig, data_root: DataRoot) -> dg.MaterializeResult:
    batch = context.partition_key
    mapping = load_mapping(landing.split_key(batch)[0])
    storage = data_root.storage
    accepted = storage.require_partition("validated_episodes", batch)
    profile = mapping.profile
    # A complete episode's length comes from the robot profile, so a score never depends on
    # what else landed in the batch (without it: the longest episode per instruction).
    nominal = round(profile.nominal_episode_s * mapping.control.rate_hz) if profile.nominal_episode_s else None
    scores = score_episodes(accepted, profile, weights=config.weights, nominal_steps=nominal)
    storage.write_partition(scores, "episode_scores", batch)
    trims = scores.select("episode_id", "n_steps", *TRIM_COLUMNS)
    storage.write_partition(trims, "idle_trims", batch)
    trimmed = trims.filter((pl.col("idle_start_steps") > 0) | (pl.col("idle_end_steps") > 0))
    by_instruction = scores.group_by("language_instruction").agg(
        pl.len().alias("episodes"), pl.col("quality_score").mean().alias("mean_score")
    ).sort("language_instruction")
    metadata = {
        "episodes": len(scores),
        "mean_quality_score": float(scores["quality_score"].mean() or 0.0),
        "by_instruction": md_table(by_instruction),
        "lowest_scoring": md_table(lowest_scores(scores, 10)),
        "by_source_label": md_table(_by_label(scores, storage.read_partition("ingest_labels", batch))),
        "episodes_with_idle_ends": len(trimmed),
        "idle_steps_at_ends": int(trims["idle_start_steps"].sum() + trims["idle_end_steps"].sum()) if len(trims) else 0,
        "idle_trims": md_table(trimmed.sort(pl.col("idle_start_steps") + pl.col("idle_end_steps"), descending=True)),
    }
    if len(scores):
        metadata |= png_metadata(score_histogram_png(scores), f"episode_scores_{batch.replace('/', '_')}")
    return dg.MaterializeResult(metadata=metadata)


def _by_label(scores: pl.DataFrame, labels: pl.DataFrame | None) -> pl.DataFrame:
    """Quality score per label the source files gave their episodes (robomimic's better/okay/worse)."""
    if labels is None or labels.is_empty():
        return pl.DataFrame(schema={"label": pl.String, "episodes": pl.UInt32, "mean_score": pl.Float64})
    return (scores.select("episode_id", "quality_score").join(labels.select("episode_id", "label"), on="episode_id")
            .group_by("label").agg(pl.len().alias("episodes"), pl.col("quality_score").mean().alias("mean_score"))
            .sort("label"))

