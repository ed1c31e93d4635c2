"""Sensors: new or changed landing batches of every source start ingestion."""
import dagster as dg

from pipelines.batches import ingested_fingerprint, landing_state
from pipelines.jobs import ingest_job
from pipelines.partitions import landing_batches


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    """Registers each new landing batch (`landing/<source>/<batch>/`) as a partition and ingests it.

    A batch whose files, mapping or robot profile changed runs again under a new run key;
    unchanged batches are never re-requested. Folders without a valid mapping are reported.
    """
    state = landing_state()
    for problem in state.problems:
        context.log.warning(f"landing batch not served: {problem}")
    if not state.fingerprints:
        return dg.SkipReason("no landing batches with a valid mapping" + (f" ({len(state.problems)} not served: see the log)" if state.problems else ""))
    known = set(context.instance.get_dynamic_partitions(landing_batches.name))
    new = [k for k in state.fingerprints if k not in known]
    requests = [
        dg.RunRequest(partition_key=key, run_key=f"{key}:{fp}")
        for key, fp in state.fingerprints.items()
        if ingested_fingerprint(context.instance, key) != fp
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[landing_batches.build_add_request(new)] if new else [],
    )
