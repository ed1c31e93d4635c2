"""The robocurate code location: `dagster dev` / `dg dev` load `defs` from here."""
import dagster as dg

from pipelines.assets import ingest, publish, quality
from pipelines.jobs import curate_job, ingest_job, publish_job
from pipelines.schedules import nightly_schedule
from pipelines.sensors import landing_sensor

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([ingest, quality]), *publish.dataset_assets()],
    jobs=[ingest_job, curate_job, publish_job],
    schedules=[nightly_schedule],
    sensors=[landing_sensor],
)
