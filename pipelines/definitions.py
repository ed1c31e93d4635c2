"""The robocurate code location: `dagster dev` / `dg dev` load `defs` from here.

Dataset assets are generated per recipe and training assets per target (YAML under datasets/);
resources wrap everything external: the data root, the referee LLM, the Hub token.
"""
import os

import dagster as dg

from pipelines.assets import ingest, labels, publish, quality
from pipelines.assets.train import training_assets, training_jobs, training_sensors
from pipelines.failure_sensor import run_failure_report
from pipelines.jobs import curate_job, ingest_job, publish_job, train_job
from pipelines.resources import DataRoot, HubToken, RefereeResource
from pipelines.production import celery_executor, is_production
from pipelines.schedules import nightly_schedule
from pipelines.sensors import landing_sensor

# The Hub token is read through dg.EnvVar, so Dagster never displays or stores its value.
hub = HubToken(token=dg.EnvVar("HF_TOKEN")) if os.environ.get("HF_TOKEN") else HubToken()

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([ingest, quality, labels]), *publish.dataset_assets(), *training_assets()],
    jobs=[ingest_job, curate_job, publish_job, train_job, *training_jobs()],
    schedules=[nightly_schedule],
    sensors=[landing_sensor, run_failure_report, *training_sensors()],
    resources={"referee": RefereeResource(), "data_root": DataRoot(), "hub": hub},
    # Production profile: each step is a Celery task; embedded: Dagster's default (runs launched from the
    # UI use subprocesses; the CLI, demo and tests execute in process).
    executor=celery_executor() if is_production() else None,
)
