"""Named asset jobs: what the UI, the schedule and the sensors trigger."""
import dagster as dg

from pipelines.partitions import landing_batches

INGEST_GROUPS = dg.AssetSelection.groups("ingest", "quality", "labels")

# One landing batch through ingestion, validation, quarantine, scores and referee labels.
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=INGEST_GROUPS,
    partitions_def=landing_batches,
    description="Ingest, validate, score and referee-label one landing batch (a partition).",
)

# Everything downstream of the per-batch tables: publish every recipe, then train and evaluate.
# Ablations (group "ablation") train several variants each: they run on demand (jobs ablate_<target>).
curate_job = dg.define_asset_job(
    "curate_job",
    selection=dg.AssetSelection.all() - INGEST_GROUPS - dg.AssetSelection.groups("ablation"),
    description="Publish new dataset versions from all ingested batches, then retrain and evaluate.",
)

publish_job = dg.define_asset_job(
    "publish_job",
    selection=dg.AssetSelection.groups("publish"),
    description="Publish a new version of every dataset recipe whose content changed.",
)

train_job = dg.define_asset_job(
    "train_job",
    selection=dg.AssetSelection.groups("train"),
    description="Every training target (datasets/targets/): policy and baseline on the newest dataset versions, "
    "then evaluation. Each target also has its own job, train_<target>.",
)
