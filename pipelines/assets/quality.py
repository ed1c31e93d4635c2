"""Group `quality`: Great Expectations validation, the quarantine, and per-episode quality scores."""

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
from quality.scores import TRIM_COLUMNS, lowest_scores, score_episodes, score_histogram_png
from quality.validation import check_accepted, validate_episodes


class ValidationConfig(dg.Config):
    min_steps: int = 20
    max_steps: int = 10_000


@dg.multi_asset(
    outs={
        "validated_episodes": dg.AssetOut(
            group_name="quality",
            description="Rows of the episodes that passed every expectation of the GX suite.",
            kinds={"great_expectations", "parquet"},
        ),
        "quarantine": dg.AssetOut(
            group_name="quality",
            description="Rejected files and episodes, one row per failed check, each with a readable reason.",
            kinds={"parquet"},
        ),
    },
    deps=[episodes],
    partitions_def=landing_batches,
    check_specs=[
        dg.AssetCheckSpec(
            "expectations_pass",
            asset="validated_episodes",
            blocking=True,
            description="The GX suite passes on every accepted row (blocks publication otherwise).",
        ),
        dg.AssetCheckSpec(
            "every_episode_accounted_for",
            asset="validated_episodes",
            blocking=True,
            description="Every ingested episode is accepted or quarantined, never both, never neither.",
        ),
    ],
)
def validate_batch(context: dg.AssetExecutionContext, config: ValidationConfig, data_root: DataRoot):
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
    )
    file_rejects = storage.read_partition("ingest_quarantine", batch)
    quarantined = pl.concat(
        [file_rejects if file_rejects is not None else empty_quarantine(), report.rejected], how="diagonal_relaxed"
    )
    storage.write_partition(report.accepted, "validated_episodes", batch)
    storage.write_partition(quarantined, "quarantine", batch)

    ingested = set(table["episode_id"].unique())
    accepted = set(report.accepted["episode_id"].unique())
    rejected = set(report.rejected["episode_id"].drop_nulls().unique())
    counts = {"ingested": len(ingested), "accepted": len(accepted), "quarantined": len(rejected)}
    context.log.info(f"batch {batch}: {counts}")

    yield dg.MaterializeResult(
        asset_key="validated_episodes",
        metadata={
            "episodes": len(accepted),
            "dagster/row_count": len(report.accepted),
            "expectations": md_table(pl.DataFrame(report.summary["expectations"])),
        },
    )
    yield dg.MaterializeResult(
        asset_key="quarantine",
        metadata={
            "episodes_quarantined": len(rejected),
            "files_quarantined": len(file_rejects) if file_rejects is not None else 0,
            "dagster/row_count": len(quarantined),
            "reasons_by_check": md_table(quarantined.group_by("stage", "check").len().sort("len", descending=True)),
            "examples": md_table(quarantined.select("source_file", "check", "reason"), max_rows=10),
        },
    )
    passed, details = check_accepted(
        report.accepted, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds,
        min_steps=config.min_steps, max_steps=config.max_steps,
        allow_empty=True,  # a batch of re-delivered files has nothing new to accept
    )
    failed = [e["expectation"] for e in details["expectations"] if not e["success"]]
    yield dg.AssetCheckResult(
        check_name="expectations_pass",
        asset_key="validated_episodes",
        passed=passed,
        description="all expectations pass" if passed else f"failed on accepted rows: {', '.join(failed)}",
        metadata={"rows_checked": len(report.accepted)},
    )
    yield dg.AssetCheckResult(
        check_name="every_episode_accounted_for",
        asset_key="validated_episodes",
        passed=ingested == accepted | rejected and not accepted & rejected,
        metadata=counts,
    )


class ScoreConfig(dg.Config):
    """Weights of the score components; None keeps the documented defaults of quality.scores."""

    weights: Optional[dict[str, float]] = None


@dg.asset(
    group_name="quality",
    partitions_def=landing_batches,
    deps=["validated_episodes"],
    description="Per-episode quality in [0, 1]: progress toward the instruction, what the robot did over "
    "time (on task, the instructed skill rather than another, efficiency, pauses, consistency), smoothness, "
    "idle time, saturation and completeness, their weighted combination, and the component that lowered "
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
        "episodes_with_idle_ends": len(trimmed),
        "idle_steps_at_ends": int(trims["idle_start_steps"].sum() + trims["idle_end_steps"].sum()) if len(trims) else 0,
        "idle_trims": md_table(trimmed.sort(pl.col("idle_start_steps") + pl.col("idle_end_steps"), descending=True)),
    }
    if len(scores):
        metadata |= png_metadata(score_histogram_png(scores), f"episode_scores_{batch.replace('/', '_')}")
    return dg.MaterializeResult(metadata=metadata)
