"""The production profile: PostgreSQL storage, the Dagster daemon and Celery workers on this machine.

`robocurate serve --profile production` (= `make prod`) starts the webserver, the daemon and two Celery
workers and stops them all on Ctrl-C; `robocurate serve --profile production --smoke N` pushes a small
simulated fleet through the same services and prints its run ids. The embedded profile (SQLite, steps in
one process) stays the default: `ROBOCURATE_PROFILE` unset means embedded everywhere.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from foundations import storage

REPO = Path(__file__).resolve().parents[1]
DEPLOY_DAGSTER_YAML = REPO / "deploy" / "dagster.yaml"

PROFILE_ENV = "ROBOCURATE_PROFILE"
POSTGRES_URL_ENV = "ROBOCURATE_POSTGRES_URL"
BROKER_ENV = "ROBOCURATE_CELERY_BROKER"
# The driver is named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, dagster-postgres ships psycopg2.
DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/robocurate"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
PROFILES = ("embedded", "production")


# dagster-celery registers its step task again for every step it submits; Celery warns each time. Harmless.
warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")


def is_production() -> bool:
    """Whether this process runs under the production profile (the executor choice reads it)."""
    return os.environ.get(PROFILE_ENV, "embedded") == "production"


def celery_executor():
    """The Celery executor on the broker of `$ROBOCURATE_CELERY_BROKER` (default RabbitMQ on loopback)."""
    from dagster_celery import celery_executor as celery

    return celery.configured({"broker": os.environ.get(BROKER_ENV, DEFAULT_BROKER), "backend": "rpc://"},
                             name="celery")


def production_env(home: Path | None = None, env: dict | None = None) -> dict:
    """The environment every production process shares: profile, DAGSTER_HOME, database, broker, data root."""
    env = dict(os.environ if env is None else env)
    env[PROFILE_ENV] = "production"
    env.setdefault(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL)
    env.setdefault(BROKER_ENV, DEFAULT_BROKER)
    env.setdefault(storage.ROOT_ENV, str(storage.data_root()))
    env["DAGSTER_HOME"] = str(home or Path(env.get("DAGSTER_HOME") or Path(env[storage.ROOT_ENV]) / "dagster-production"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_database(url: str) -> None:
    """Create the database named by `url` when it is missing (the server's `postgres` database is asked)."""
    import psycopg2

    parts = urlsplit(url)._replace(scheme="postgresql")  # libpq knows no "+driver"
    name = parts.path.lstrip("/")
    if not name:
        raise ValueError(f"{POSTGRES_URL_ENV}={url} names no database: end it with /<database>")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        conn = psycopg2.connect(admin)
    except psycopg2.OperationalError as err:
        raise RuntimeError(f"PostgreSQL at {parts.hostname}:{parts.port or 5432} is not reachable "
                           f"({' '.join(str(err).split())}); start it or set {POSTGRES_URL_ENV}") from err
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_database(url: str) -> None:
    """Drop the database named by `url` (tests drop their own temporary one)."""
    import psycopg2

    parts = urlsplit(url)._replace(scheme="postgresql")
    conn = psycopg2.connect(urlunsplit(parts._replace(path="/postgres")))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')
    finally:
        conn.close()


def prepare(env: dict) -> Path:
    """Create the database and `$DAGSTER_HOME` with deploy/dagster.yaml in it; returns DAGSTER_HOME."""
    ensure_database(env[POSTGRES_URL_ENV])
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DEPLOY_DAGSTER_YAML, home / "dagster.yaml")
    return home


def worker_log_dir(env: dict) -> Path:
    # Not $DAGSTER_HOME/logs: Dagster's webserver and daemon own that folder.
    return Path(env["DAGSTER_HOME"]) / "celery" / "logs"


def start_workers(env: dict, n: int = 2, log_dir: Path | None = None) -> list[subprocess.Popen]:
    """Start `n` Celery workers (one task at a time each) on the broker of `env`; stop them with `stop`.

    Workers run `celery -A dagster_celery.app` directly (not through `dagster-celery worker start`) so
    that the pid held here is the worker's own and stopping it stops the worker.
    """
    config_dir = Path(env["DAGSTER_HOME"]) / "celery"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "dagster_celery_config.py").write_text(
        f"broker_url = {env[BROKER_ENV]!r}\nresult_backend = 'rpc://'\nworker_hijack_root_logger = False\n"
        # Acknowledge a task when it ends: an idle worker never waits behind a busy worker's reserved task.
        "task_acks_late = True\n")
    worker_env = dict(env, PYTHONPATH=os.pathsep.join((str(config_dir), env["PYTHONPATH"])))
    log_dir = log_dir or worker_log_dir(env)
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(1, n + 1):
        log = open(log_dir / f"celery-worker-{i}.log", "ab")
        procs.append(_popen(
            [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker", "--concurrency=1",
             "--prefetch-multiplier=1", "--loglevel=INFO", "-Q", "dagster", "-n", f"robocurate-{i}-{os.getpid()}@%h"],
            worker_env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def stop(procs: list[subprocess.Popen], timeout: float = 30.0, interrupt: bool = True) -> None:
    """Stop each process by its pid as Ctrl-C would (SIGINT: a Celery worker finishes its task, the daemon and
    webserver close their code servers), then SIGKILL what is still running after `timeout`.
    `interrupt=False` when a terminal's Ctrl-C already reached them (a second one cuts a task short)."""
    for proc in procs:
        if interrupt and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _popen(cmd: list[str], env: dict, **kwargs) -> subprocess.Popen:
    # A shell that starts us in the background makes children ignore SIGINT: give them the default back,
    # so that Ctrl-C and `stop` reach them.
    return subprocess.Popen(cmd, cwd=REPO, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            **kwargs)


def serve(port: int = 3000, workers: int = 2) -> int:
    """Webserver, daemon and Celery workers of the production profile, until Ctrl-C or one of them exits."""
    env = production_env()
    home = prepare(env)
    bin_dir = Path(sys.executable).parent
    location = ["-m", "pipelines.definitions", "-d", str(REPO)]
    logs = worker_log_dir(env)
    procs = start_workers(env, workers, logs)
    procs.append(_popen([str(bin_dir / "dagster-daemon"), "run", *location], env))
    procs.append(_popen([str(bin_dir / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), *location], env))
    print(f"production profile: UI http://127.0.0.1:{port}, DAGSTER_HOME={home}, "
          f"storage {env[POSTGRES_URL_ENV]}, broker {env[BROKER_ENV]}, {workers} Celery workers "
          f"(logs in {logs}); Ctrl-C stops everything", flush=True)
    interrupted = False
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        failed = [p.args[0] if p.args[0] != sys.executable else "celery worker" for p in procs if p.poll() is not None]
        print(f"stopping: {', '.join(map(str, failed))} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # A terminal's Ctrl-C reached every process of the group; one sent to this process alone did not.
        interrupted = os.getpgrp() == os.tcgetpgrp(sys.stdin.fileno()) if sys.stdin.isatty() else False
        return 0
    finally:
        stop(procs, interrupt=not interrupted)
        print("stopped: webserver, daemon and workers", flush=True)


def smoke(episodes: int = 6, seed: int = 0) -> int:
    """A small simulated fleet through the production profile: ingest and publish on the Celery workers."""
    import tempfile

    import dagster as dg

    from foundations import landing
    from pipelines.partitions import landing_batches
    from pipelines.runner import execute_job
    from simulator.embodiments import EMBODIMENTS, get_embodiment

    env = production_env()
    os.environ.update(env)
    prepare(env)
    embodiment = get_embodiment(EMBODIMENTS[0])
    workers = start_workers(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            embodiment.simulate_fleet(episodes, Path(tmp), seed=seed)
            key = landing.land([Path(tmp)], embodiment.source, f"smoke-{int(time.time())}")
        instance = dg.DagsterInstance.get()
        instance.add_dynamic_partitions(landing_batches.name, [key])
        ok = True
        for job, partition in (("ingest_job", key), ("publish_job", None)):
            result = execute_job(job, instance, partition_key=partition)
            failed = [f"{e.step_key}: {' '.join(str(e.step_failure_data.error.message).split())[:300]}"
                      for e in result.all_events if e.is_step_failure]
            print(f"{job:<12} run {result.run_id}  {'SUCCESS' if result.success else 'FAILURE'}"
                  + (f"  partition {partition}" if partition else "")
                  + "".join(f"\n  failed step {f}" for f in failed), flush=True)
            ok = ok and result.success
        print(f"smoke {'passed' if ok else 'FAILED'}: runs are in {env[POSTGRES_URL_ENV]} "
              f"(`make prod` shows them)")
        return 0 if ok else 1
    finally:
        stop(workers)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.production run-job JOB [--partition KEY] [--ops JSON] [--assets KEY..]
    [--resources JSON]`: one run through the
    production profile's executor, orchestrated by this process; prints {"run_id", "success"} as JSON.
    Tests and scripts use it to start runs side by side."""
    import argparse
    import json

    import dagster as dg

    from pipelines.runner import execute_job

    parser = argparse.ArgumentParser(prog="python -m pipelines.production")
    parser.add_argument("command", choices=["run-job"])
    parser.add_argument("job")
    parser.add_argument("--partition")
    parser.add_argument("--ops", type=json.loads, help='op config, e.g. {"policy__<target>": {"n_steps": 20}}')
    parser.add_argument("--assets", nargs="+", help="run only these assets of the job, e.g. hub/<recipe>")
    parser.add_argument("--resources", type=json.loads, help='resource config, e.g. {"referee": {"segment_steps": 50}}')
    args = parser.parse_args(argv)
    if not is_production():
        raise SystemExit(f"{PROFILE_ENV}=production is not set: this command runs the production profile only")
    result = execute_job(args.job, dg.DagsterInstance.get(), partition_key=args.partition, ops=args.ops,
                         resources=args.resources, assets=args.assets)
    print(json.dumps({"run_id": result.run_id, "success": result.success}), flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
