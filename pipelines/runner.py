"""Running the graph from the command line (the demo) on the embedded Dagster instance.

The same jobs the UI, sensor and schedule use are executed in-process against
the instance in `$DAGSTER_HOME`, so every run shows up in `dagster dev` later.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import dagster as dg

from foundations import storage

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_DAGSTER_YAML = REPO_ROOT / "dagster.yaml"
# Who runs an in-process run: a run whose process is gone (killed, out of memory) is released by the next one.
PID_TAG, HOST_TAG = "robocurate/pid", "robocurate/host"
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def dagster_home() -> Path:
    """`$DAGSTER_HOME` (default `<data root>/dagster`), created with the repo's dagster.yaml in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or storage.data_root() / "dagster").expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if REPO_DAGSTER_YAML.exists() and not target.exists():
        shutil.copyfile(REPO_DAGSTER_YAML, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    name: str,
    partition_key: str | None = None,
    log_level: str = "WARNING",
    resources: dict | None = None,
    ops: dict | None = None,
):
    """Execute a named job in this process; the run and its events are stored in `instance`.

    Console logging defaults to warnings: the full event log is in the Dagster UI.
    `resources` and `ops` configure this run, e.g. resources={"referee": {"segment_steps": 40}},
    ops={"policy__<target>": {"n_steps": 200}} (op names are the asset keys joined by "__").
    """
    release_dead_runs(instance)
    result = defs.resolve_job_def(name).execute_in_process(
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        run_config=_run_config(log_level, resources, ops),
        tags={PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()},
    )
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        raise RuntimeError(f"{name} failed (steps: {', '.join(failed) or 'see the Dagster UI'}); run `robocurate dev` to inspect")
    return result


def release_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the in-process runs of this machine whose process has ended, and free their pool slots.

    A run killed mid-step (SIGKILL, out of memory) keeps its status and its slot in the "training" pool
    (dagster.yaml: one at a time), so every later training would wait for it forever, silently; without a
    daemon nothing else frees it. Runs of live processes, of other machines and of the daemon are left alone.
    Returns the ids released."""
    released = []
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: socket.gethostname()}))
    for run in runs:
        pid = int(run.tags.get(PID_TAG, "0"))
        if pid and not _alive(pid):
            instance.report_run_failed(run, message=f"its process ({pid}) ended before the run did; released by "
                                                    f"pid {os.getpid()}")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _run_config(log_level: str, resources: dict | None, ops: dict | None) -> dict:
    run_config: dict = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if resources:
        run_config["resources"] = {key: {"config": cfg} for key, cfg in resources.items()}
    if ops:
        run_config["ops"] = {key: {"config": cfg} for key, cfg in ops.items()}
    return run_config


def execute_job(
    name: str,
    instance: dg.DagsterInstance,
    partition_key: str | None = None,
    log_level: str = "WARNING",
    resources: dict | None = None,
    ops: dict | None = None,
    assets: list[str] | None = None,
) -> dg.ExecutionResult:
    """Execute a named job with the code location's executor (Celery under the production profile):
    this process orchestrates, the steps run where the executor sends them. Same arguments as
    `run_job`, and `assets` (e.g. ["hub/<recipe>"]) to run part of the job; returns the result (check
    `.success`) instead of raising."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repo = ReconstructableRepository.for_module("pipelines.definitions", "defs", working_directory=str(REPO_ROOT))
    with dg.execute_job(
        repo.get_reconstructable_job(name),
        instance=instance,
        run_config=_run_config(log_level, resources, ops),
        tags={"dagster/partition": partition_key} if partition_key else None,
        asset_selection=[dg.AssetKey.from_user_string(a) for a in assets] if assets else None,
    ) as result:
        return result


def ingest_pending(progress: bool = True, resources: dict | None = None) -> list[str]:
    """Run ingest_job for every pending landing batch of every source (new, or whose files, mapping
    or robot profile changed); returns their partition keys. Batches that cannot be served are
    reported on stderr and skipped."""
    import sys

    from pipelines.batches import landing_state, pending_batches

    dagster_home()
    from pipelines.definitions import defs  # after DAGSTER_HOME is set

    instance = dg.DagsterInstance.get()
    state = landing_state()
    for problem in state.problems:
        print(f"not served: {problem}", file=sys.stderr)
    pending = pending_batches(instance, state)
    new = [k for k in pending if not instance.has_dynamic_partition("landing_batch", k)]
    if new:
        instance.add_dynamic_partitions("landing_batch", new)
    for i, key in enumerate(pending, 1):
        if progress:
            print(f"[{i}/{len(pending)}] ingest_job {key}", flush=True)
        run_job(defs, instance, "ingest_job", partition_key=key, resources=resources)
    return pending
