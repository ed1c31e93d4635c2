"""A failed run is reported where people look: the daemon's log and the metadata of the assets it touched."""
import dagster as dg

# Metadata keys of the observation a failure leaves on each asset of the failed run.
FAILURE_RUN_KEY = "last_failure_run_id"


def failed_asset_keys(context: dg.RunFailureSensorContext) -> list[dg.AssetKey]:
    """The assets whose steps failed (op names are asset keys joined by "__"); else every asset the run targeted."""
    steps = {e.step_key for e in context.get_step_failure_events() if e.step_key}
    keys = [dg.AssetKey(step.split("__")) for step in sorted(steps)]
    return keys or sorted(context.dagster_run.asset_selection or [], key=lambda k: k.to_user_string())


@dg.run_failure_sensor(
    name="run_failure_report",
    default_status=dg.DefaultSensorStatus.RUNNING,
    monitor_all_code_locations=False,
    description="Logs every failed run and records an observation (run id, job, partition, error) on each "
    "asset it failed to materialize, visible in the asset's metadata in the UI. No outside service.",
)
def run_failure_report(context: dg.RunFailureSensorContext) -> None:
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    error = context.failure_event.message or "no message"
    keys = failed_asset_keys(context)
    context.log.error(
        f"run {run.run_id} of {run.job_name}{f' (partition {partition})' if partition else ''} failed: {error}; "
        f"assets: {', '.join(k.to_user_string() for k in keys) or 'none'}"
    )
    for key in keys:
        context.instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=key,
                metadata={FAILURE_RUN_KEY: run.run_id, "failed_job": run.job_name,
                          "failure": error[:2000], **({"failed_partition": partition} if partition else {})},
            )
        )

