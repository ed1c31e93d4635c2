"""Sensors: new landing batches start ingestion."""
import dagster as dg

from foundations import landing
from foundations.ingest.mapping import load_mapping
from pipelines.jobs import ingest_job, train_job
from pipelines.partitions import landing_batches

DEFAULT_MAPPING = "ant_fleet_ros2"


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Registers each new landing batch as a partition and ingests it.

    A batch whose listing changed (files added later) runs again under a new run
    key; unchanged batches are never re-requested.
    """
    glob = load_mapping(DEFAULT_MAPPING).file_glob
    batches = landing.list_batches()
    if not batches:
        return dg.SkipReason(f"no landing batches under {landing.landing_dir()}")
    known = set(context.instance.get_dynamic_partitions(landing_batches.name))
    new = [b for b in batches if b not in known]
    requests = [
        dg.RunRequest(partition_key=b, run_key=f"{b}:{landing.batch_fingerprint(b, glob)}") for b in batches
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[landing_batches.build_add_request(new)] if new else [],
    )


@dg.asset_sensor(
    asset_key=dg.AssetKey(["hub", "ant_skills_curated"]),
    job=train_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def new_dataset_version_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    """Retrains when the curated dataset the policy learns from got a new version (not when nothing changed)."""
    meta = asset_event.asset_materialization.metadata
    if not meta.get("new_version") or not meta["new_version"].value:
        return dg.SkipReason("the dataset was materialized without a new version")
    version = meta["version"].value
    return dg.RunRequest(run_key=f"ant_skills_curated:{version}", tags={"dataset_version": version})
