"""Sensors: new landing batches start ingestion."""
import dagster as dg

from pipelines import landing
from pipelines.ingest.mapping import load_mapping
from pipelines.jobs import ingest_job
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
