"""The in-process runner: a run whose process died does not hold its pool slot forever."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from pipelines.runner import HOST_TAG, PID_TAG, release_dead_runs, run_job


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_runs_pool_slot_is_freed_by_the_next_run(instance):
    """A run killed mid-step keeps status STARTED and its "training" slot; the next run releases it, and
    leaves alone runs of live processes and of other machines."""
    storage = instance.event_log_storage
    storage.set_concurrency_slots("training", 1)
    here = socket.gethostname()
    dead = create_run_for_test(instance, job_name="ablate_x", status=dg.DagsterRunStatus.STARTED,
                               tags={PID_TAG: str(_dead_pid()), HOST_TAG: here})
    alive = create_run_for_test(instance, job_name="train_x", status=dg.DagsterRunStatus.STARTED,
                                tags={PID_TAG: str(os.getpid()), HOST_TAG: here})
    elsewhere = create_run_for_test(instance, job_name="train_y", status=dg.DagsterRunStatus.STARTED,
                                    tags={PID_TAG: str(_dead_pid()), HOST_TAG: here + "-other"})
    assert storage.claim_concurrency_slot("training", dead.run_id, "ablation__x").is_claimed
    assert not storage.claim_concurrency_slot("training", alive.run_id, "policy__x").is_claimed  # waits

    assert release_dead_runs(instance) == [dead.run_id]
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert {instance.get_run_by_id(r.run_id).status for r in (alive, elsewhere)} == {dg.DagsterRunStatus.STARTED}
    assert storage.get_concurrency_info("training").claimed_slots == []
    assert release_dead_runs(instance) == []


def test_runs_say_which_process_runs_them(instance):
    @dg.asset(pool="training")
    def pooled() -> int:
        return 1

    defs = dg.Definitions(assets=[pooled], jobs=[dg.define_asset_job("pooled_job", selection=[pooled])])
    result = run_job(defs, instance, "pooled_job")
    run = instance.get_run_by_id(result.run_id)
    assert run.tags[PID_TAG] == str(os.getpid()) and run.tags[HOST_TAG] == socket.gethostname()
    assert run.status == dg.DagsterRunStatus.SUCCESS
