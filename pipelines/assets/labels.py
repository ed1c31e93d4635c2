"""Group `labels`: the referee LLM (fine-tuned per robot) and its dense rewards for every accepted episode."""
import dagster as dg
import polars as pl

from foundations import landing
from foundations.ingest import load_mapping
from pipelines.metadata import md_table
from pipelines.partitions import landing_batches
from pipelines.resources import DataRoot, RefereeResource
from quality.referee import label_episodes, referee_agreement

MODEL_TABLE = "referee_model"  # per batch: the adapter its rewards come from, and its training episodes


@dg.asset(
    group_name="labels",
    partitions_def=landing_batches,
    deps=["validated_episodes"],
    description="The embedded referee fine-tuned with LoRA on this batch's training episodes (a deterministic "
    "half), labelled by a served teacher model when configured, else by the robot's measured progress. "
    "Adapters are versioned under checkpoints/referee-<robot>/ and retrained only when their content changes.",
    kinds={"peft", "safetensors"},
)
def referee_model(context: dg.AssetExecutionContext, referee: RefereeResource, data_root: DataRoot) -> dg.MaterializeResult:
    from quality.referee_tuning import tune_referee

    batch = context.partition_key
    mapping = load_mapping(landing.split_key(batch)[0])
    storage = data_root.storage
    accepted = storage.require_partition("validated_episodes", batch)
    record, created = None, "the referee is not the embedded model, or fine_tune is off"
    if referee.backend == "local" and referee.fine_tune:
        record, created = tune_referee(accepted, mapping.profile, referee.make_backend(), name=f"referee-{mapping.robot}",
                                       teacher=referee.make_teacher(), segment_steps=referee.segment_steps)  # fmt: skip
    storage.write_partition(
        pl.DataFrame({"adapter": [record and record["path"]], "training_episodes": [record and record["training_episodes"]]},
                     schema={"adapter": pl.String, "training_episodes": pl.List(pl.String)}),
        MODEL_TABLE, batch,
    )  # fmt: skip
    if record is None:
        context.log.info(f"referee not fine-tuned: {created}")
        return dg.MaterializeResult(metadata={"fine_tuned": False, "reason": created})
    training = record.get("training", {})
    context.log.info(f"referee adapter v{record['version']} ({'trained' if created else 'unchanged, reused'}): "
                     f"{training.get('segments')} segments from {record['teacher']}")
    return dg.MaterializeResult(
        metadata={
            "fine_tuned": True,
            "version": record["version"],
            "trained_now": created,
            "path": dg.MetadataValue.path(record["path"]),
            "teacher": record["teacher"],
            "training_episodes": len(record["training_episodes"]),
            "held_out_episodes": len(record["held_out_episodes"]),
            "training": dg.MetadataValue.json(training),
        }
    )


@dg.asset(
    group_name="labels",
    partitions_def=landing_batches,
    deps=["validated_episodes", "referee_model"],
    description="Per-segment judgements of a referee LLM (did the robot move toward its instruction?) turned "
    "into dense per-step rewards. Judgements are cached by model, prompt template and segment content.",
    kinds={"transformers", "parquet"},
)
def referee_rewards(context: dg.AssetExecutionContext, referee: RefereeResource, data_root: DataRoot) -> dg.MaterializeResult:
    batch = context.partition_key
    profile = load_mapping(landing.split_key(batch)[0]).profile
    storage = data_root.storage
    accepted = storage.require_partition("validated_episodes", batch)
    tuned = storage.require_partition(MODEL_TABLE, batch).row(0, named=True)
    labels = label_episodes(accepted, referee.make_backend(tuned["adapter"]), profile,
                            segment_steps=referee.segment_steps, batch_size=referee.batch_size)  # fmt: skip
    # Which episodes the referee learnt from: agreement is reported on the others (held out).
    trained_on = tuned["training_episodes"] or []
    segments = labels.segments.with_columns(pl.col("episode_id").is_in(trained_on).alias("referee_trained_on"))
    storage.write_partition(labels.steps, "referee_rewards", batch)
    storage.write_partition(segments.drop("probs"), "referee_segments", batch)
    # Truth here is the robot's own measured motion, so the agreement is computed in production too.
    held_out = segments.filter(~pl.col("referee_trained_on"))
    agreement = referee_agreement(held_out, accepted, profile, segment_steps=referee.segment_steps)
    stats = labels.stats
    context.log.info(f"referee {stats['model_id']}: {stats['calls']} prompts, {stats['cache_hits']} cache hits, "
                     f"{stats['seconds']:.1f} s; value-order correlation {agreement.get('voc')}")
    return dg.MaterializeResult(
        metadata={
            "model": stats["model_id"],
            "calls": stats["calls"],
            "cache_hits": stats["cache_hits"],
            "prompt_tokens": stats["prompt_tokens"],
            "seconds": stats["seconds"],
            "segments": stats["segments"],
            "label_counts": dg.MetadataValue.json(stats["label_counts"]),
            "agreement_voc": agreement.get("voc"),
            "agreement_voc_time_baseline": agreement.get("voc_time_baseline"),
            "agreement_spearman_segment": agreement.get("spearman_segment"),
            "agreement_label_accuracy": agreement.get("accuracy"),
            "agreement_majority_accuracy": agreement.get("majority_accuracy"),
            "agreement": dg.MetadataValue.json(agreement),
            "examples": md_table(labels.segments.select("episode_id", "segment", "label", "reward", "text"), 5),
        }
    )
