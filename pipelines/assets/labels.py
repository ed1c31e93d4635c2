"""Group `labels`: the referee LLM's dense rewards for every accepted episode."""
import dagster as dg

from foundations import landing
from foundations.ingest import load_mapping
from pipelines.metadata import md_table
from pipelines.partitions import landing_batches
from pipelines.resources import DataRoot, RefereeResource
from quality.referee import label_episodes, referee_agreement


@dg.asset(
    group_name="labels",
    partitions_def=landing_batches,
    deps=["validated_episodes"],
    description="Per-segment judgements of a referee LLM (did the robot move toward its instruction?) turned "
    "into dense per-step rewards. Judgements are cached by model, prompt template and segment content.",
    kinds={"transformers", "parquet"},
)
def referee_rewards(context: dg.AssetExecutionContext, referee: RefereeResource, data_root: DataRoot) -> dg.MaterializeResult:
    batch = context.partition_key
    profile = load_mapping(landing.split_key(batch)[0]).profile
    storage = data_root.storage
    accepted = storage.require_partition("validated_episodes", batch)
    labels = label_episodes(accepted, referee.make_backend(), profile, segment_steps=referee.segment_steps,
                            batch_size=referee.batch_size)
    storage.write_partition(labels.steps, "referee_rewards", batch)
    storage.write_partition(labels.segments.drop("probs"), "referee_segments", batch)
    # Truth here is the robot's own measured motion, so the agreement is computed in production too.
    agreement = referee_agreement(labels.segments, accepted, profile, segment_steps=referee.segment_steps)
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
