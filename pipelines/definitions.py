"""The robocurate code location: `dagster dev` / `dg dev` load `defs` from here."""
import dagster as dg

from pipelines.assets import ingest, labels, publish, quality, train
from pipelines.jobs import curate_job, ingest_job, publish_job, train_job
from pipelines.schedules import nightly_schedule
from pipelines.resources import RefereeResource
from pipelines.sensors import landing_sensor, new_dataset_version_sensor

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([ingest, quality, labels, train]), *publish.dataset_assets()],
    jobs=[ingest_job, curate_job, publish_job, train_job],
    schedules=[nightly_schedule],
    sensors=[landing_sensor, new_dataset_version_sensor],
    resources={"referee": RefereeResource()},
)
