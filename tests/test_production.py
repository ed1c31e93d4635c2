"""The production profile on the real services: PostgreSQL storage and Celery workers on a RabbitMQ broker.

The workers are real `celery` processes started here (loopback only) and stopped by pid; each test session
gets its own PostgreSQL database and its own RabbitMQ virtual host, dropped at the end. Runs are orchestrated
by `python -m pipelines.production run-job` subprocesses, so two runs really run side by side.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from foundations import landing, storage
from pipelines import production

REPO = Path(__file__).resolve().parents[1]
SOURCE = "ant_fleet_ros2"
# Words Dagster, PostgreSQL and SQLite use when writers collide.
LOCK_WORDS = ("database is locked", "deadlock", "could not obtain lock", "lock timeout", "serialization failure")


def _broker(name: str) -> tuple[str, callable]:
    """A RabbitMQ virtual host of our own (queues of other sessions never reach our workers)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl is not on PATH: the production tests need RabbitMQ on 127.0.0.1:5672")
    subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True)
    subprocess.run([ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True, capture_output=True)
    return (f"pyamqp://guest:guest@127.0.0.1:5672/{name}",
            lambda: subprocess.run([ctl, "delete_vhost", name], capture_output=True))


@pytest.fixture(scope="module")
def prod(tmp_path_factory, smollm2_dir):
    """Env, database, DAGSTER_HOME and two Celery workers of the production profile, for this module."""
    tmp = tmp_path_factory.mktemp("production")
    name = f"robocurate_test_{uuid.uuid4().hex[:10]}"
    broker, drop_broker = _broker(name)
    env = production.production_env(tmp / "dagster", {
        **os.environ,
        storage.ROOT_ENV: str(tmp / "data"),
        production.POSTGRES_URL_ENV: f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
        production.BROKER_ENV: broker,
    })
    production.prepare(env)
    workers = production.start_workers(env, 2, tmp / "logs")
    try:
        yield {"env": env, "tmp": tmp, "logs": tmp / "logs",
               "resources": {"referee": {"model_dir": str(smollm2_dir), "segment_steps": 60}}}
    finally:
        production.stop(workers)
        assert all(w.returncode is not None for w in workers)
        production.drop_database(env[production.POSTGRES_URL_ENV])
        drop_broker()


def _land(prod, seed: int, batch: str, n: int = 4) -> str:
    out = prod["tmp"] / f"fleet-{batch}"
    from simulator.embodiments import get_embodiment

    get_embodiment("ant").simulate_fleet(n, out, seed=seed, episode_steps=60)
    with storage.using_root(Path(prod["env"][storage.ROOT_ENV])):
        return landing.land([out], SOURCE, batch)


def _run(prod, job: str, partition: str | None = None, ops: dict | None = None, assets: list | None = None) -> dict:
    """One run through the production profile, orchestrated by its own process."""
    cmd = [sys.executable, "-m", "pipelines.production", "run-job", job, "--resources", json.dumps(prod["resources"])]
    cmd += ["--partition", partition] if partition else []
    cmd += ["--ops", json.dumps(ops)] if ops else []
    cmd += ["--assets", *assets] if assets else []
    proc = subprocess.run(cmd, cwd=REPO, env=prod["env"], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"{job} printed no result (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return {**json.loads(lines[-1]), "output": proc.stdout + proc.stderr}


def _side_by_side(prod, *runs) -> list[dict]:
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda args: _run(prod, *args), runs))


def _instance(prod):
    old = {k: os.environ.get(k) for k in ("DAGSTER_HOME", production.POSTGRES_URL_ENV)}
    os.environ.update({k: prod["env"][k] for k in old})
    try:
        return dg.DagsterInstance.get()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _assert_ran_on_workers(instance, result: dict) -> None:
    """Success, every step executed by a Celery worker, no lock error anywhere."""
    assert result["success"], result["output"][-4000:]
    records = instance.all_logs(result["run_id"])
    messages = [r.message or "" for r in records]
    steps = {r.step_key for r in records if r.dagster_event and r.dagster_event.is_step_success}
    on_workers = {r.step_key for r, m in zip(records, messages) if "in celery worker" in m}
    assert steps and steps <= on_workers, f"steps not run by a Celery worker: {steps - on_workers}"
    text = (" ".join(messages) + result["output"]).lower()
    assert not [w for w in LOCK_WORDS if w in text]


def _no_duplicates(prod, key: str) -> pl.DataFrame:
    with storage.using_root(Path(prod["env"][storage.ROOT_ENV])):
        files = storage.require_partition("raw_log_files", key)
        eps = storage.require_partition("episodes", key)
        validated = storage.read_partition("validated_episodes", key)
    assert files.select(pl.col("file").is_duplicated().any()).item() is False
    assert eps.select(pl.struct("episode_id", "step").is_duplicated().any()).item() is False
    if validated is not None:
        assert validated.select(pl.struct("episode_id", "step").is_duplicated().any()).item() is False
    return eps


def test_fleet_through_celery_workers_on_postgres(prod):
    """Two batches ingested at the same time, the same batch twice at the same time, then publishing:
    every step on a Celery worker, runs and events in PostgreSQL, no lock error, no duplicate row."""
    a, b, c = (_land(prod, seed, name) for seed, name in ((1, "batch-a"), (2, "batch-b"), (3, "batch-c")))
    instance = _instance(prod)
    instance.add_dynamic_partitions("landing_batch", [a, b, c])
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"

    t0 = time.monotonic()
    different = _side_by_side(prod, ("ingest_job", a), ("ingest_job", b))
    same = _side_by_side(prod, ("ingest_job", c), ("ingest_job", c))
    elapsed = time.monotonic() - t0
    for result in different + same:
        _assert_ran_on_workers(instance, result)
    # Both pairs overlapped in time: each run's start precedes the other's end.
    for pair in (different, same):
        r1, r2 = (instance.get_run_record_by_id(r["run_id"]) for r in pair)
        assert r1.start_time < r2.end_time and r2.start_time < r1.end_time
    # The same assets as the embedded profile's ingest_job (the code location is the same).
    from pipelines.definitions import defs  # imported here without the profile: the embedded definitions
    from pipelines.jobs import INGEST_GROUPS

    embedded = set(INGEST_GROUPS.resolve(defs.resolve_asset_graph()))
    for result in different + same:
        materialized = {r.dagster_event.asset_key for r in instance.all_logs(result["run_id"])
                        if r.dagster_event and r.dagster_event.is_step_materialization}
        assert materialized == embedded
    counts = {k: _no_duplicates(prod, k)["episode_id"].n_unique() for k in (a, b, c)}
    assert all(n > 0 for n in counts.values()), counts

    # The curated recipe's cut leaves nothing of so small a fleet: publish the recipe that takes every episode.
    published = _run(prod, "publish_job", assets=["hub/ant_skills"])
    _assert_ran_on_workers(instance, published)
    with storage.using_root(Path(prod["env"][storage.ROOT_ENV])):
        from foundations.publish import list_versions

        versions = list_versions("ant_skills")
        assert [v["version"] for v in versions] == ["1.0.0"]
        shards = pl.read_parquet(sorted((Path(versions[0]["path"]) / "data").glob("*.parquet")))
    # Every episode of the version comes from one of the three batches, each exactly once.
    assert shards.select(pl.struct("episode_id", "step").is_duplicated().any()).item() is False
    assert set(shards["episode_id"]) <= set().union(*(set(_no_duplicates(prod, k)["episode_id"]) for k in (a, b, c)))
    print(f"4 ingest runs (2 pairs side by side) in {elapsed:.0f} s; episodes per batch {counts}")


def test_training_through_celery_workers(prod):
    """A target trains (tiny IQL and BC) and evaluates on the workers from the version published above."""
    instance = _instance(prod)
    if not instance.get_runs(dg.RunsFilter(job_name="publish_job")):
        pytest.skip("needs the published version of test_fleet_through_celery_workers_on_postgres")
    quick = {"n_steps": 20, "n_steps_per_epoch": 10, "dataset": "ant_skills"}
    ops = {"policy__ant": quick, "baseline__ant": quick, "evaluation__ant": {"seeds": [1000], "steps": 20}}
    result = _run(prod, "train_ant", ops=ops)
    _assert_ran_on_workers(instance, result)
    with storage.using_root(Path(prod["env"][storage.ROOT_ENV])):
        table = storage.read_partition("evaluation", "ant")
    assert set(table["policy"]) == {"policy", "baseline"} and table["normalized_score"].is_finite().all()


def test_run_failure_sensor_reports_on_the_asset(tmp_path, monkeypatch, data_root):
    """A failed ingest run leaves a log line and an observation with the run id on the failed asset."""
    from pipelines.definitions import defs
    from pipelines.failure_sensor import FAILURE_RUN_KEY, run_failure_report
    from pipelines.runner import dagster_home

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    dagster_home()
    with dg.DagsterInstance.get() as instance:
        key = "no_such_source/batch-x"  # no mapping for this source: raw_log_files fails
        instance.add_dynamic_partitions("landing_batch", [key])
        result = defs.resolve_job_def("ingest_job").execute_in_process(
            instance=instance, partition_key=key, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_report", dagster_instance=instance,
            dagster_run=result.dagster_run, dagster_event=failure).for_run_failure()
        run_failure_report(context)
        observed = instance.fetch_observations(dg.AssetKey("raw_log_files"), limit=1).records
        assert observed, "no observation on the failed asset"
        meta = observed[0].asset_observation.metadata
        assert meta[FAILURE_RUN_KEY].value == result.run_id
        assert meta["failed_partition"].value == key and meta["failed_job"].value == "ingest_job"


def test_schedule_and_sensors_run_by_default():
    from pipelines.definitions import defs

    schedules = {s.name: s for s in defs.schedules}
    assert schedules["nightly_curate"].default_status == dg.DefaultScheduleStatus.RUNNING
    for sensor in defs.sensors:
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING, sensor.name


def test_serve_starts_everything_and_ctrl_c_stops_it(prod):
    """`robocurate serve --profile production`: webserver answers, the daemon beats, two workers are ready;
    SIGINT (Ctrl-C) stops every process it started."""
    import signal
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(prod["env"], DAGSTER_HOME=str(prod["tmp"] / "serve-home"),
               **{storage.ROOT_ENV: str(prod["tmp"] / "serve-data")})
    log = prod["tmp"] / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--profile", "production",
                                 "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        instance = _instance(prod)  # the same database the daemon of `serve` beats in
        logs = production.worker_log_dir(env)
        deadline, ready = time.monotonic() + 240, {}
        while not (ready and all(ready.values())) and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                    ready["webserver"] = r.status == 200
            except OSError:
                ready["webserver"] = False
            beats = set(instance.get_daemon_heartbeats())
            ready["daemon"] = {"SENSOR", "SCHEDULER", "QUEUED_RUN_COORDINATOR"} <= beats
            for i in (1, 2):
                path = logs / f"celery-worker-{i}.log"
                ready[f"worker {i}"] = path.exists() and " ready." in path.read_text(errors="replace")
            time.sleep(2)
        assert all(ready.values()), f"not ready: {ready}\n{log.read_text()[-3000:]}"
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
    assert code == 0, log.read_text()[-3000:]
    time.sleep(2)
    with pytest.raises(ProcessLookupError):  # nothing of the session is left running
        os.killpg(proc.pid, 0)
