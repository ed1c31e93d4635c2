"""The nightly run: publish what landed during the day, then retrain on the newest data."""
import dagster as dg

from pipelines.jobs import curate_job

# Running by default: wherever a daemon runs (`make prod`, `make dev`) the nightly curation happens
# without anyone switching it on in the UI.
nightly_schedule = dg.ScheduleDefinition(
    name="nightly_curate",
    job=curate_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="02:00 UTC: new dataset versions from the day's batches, retraining and evaluation. "
    "Unchanged inputs are skipped by content hash, so a quiet night costs almost nothing.",
)
