"""The Dagster UI as a person uses it, in headless Chromium (Debian's `chromium`, driven by Playwright).

`dagster dev` runs on a free loopback port against a temporary DAGSTER_HOME and data root with one landed
batch; the browser finds every asset in the lineage graph, launches the ingest job for that batch from the
launch dialog, and finds the quality-score plot in the asset's metadata. Screenshots go to the test's tmp folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml

from foundations import landing

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SOURCE = "ant_fleet_ros2"
BATCH = "ui-batch"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/server_info", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"dagster dev did not answer on {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def ui(tmp_path, data_root, smollm2_dir, monkeypatch):
    """`dagster dev` on a free loopback port, with one landed Ant batch registered as a partition."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright is a test dependency: pip install -e '.[test]'")
    from simulator.embodiments import get_embodiment

    fleet = tmp_path / "fleet"
    get_embodiment("ant").simulate_fleet(3, fleet, seed=5, fault_rate=0.0, episode_steps=60)
    key = landing.land([fleet], SOURCE, BATCH)
    # The referee reads the converted SmolLM2 from the data root's cache: reuse the session's copy.
    models = data_root / "cache" / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / smollm2_dir.name).symlink_to(smollm2_dir, target_is_directory=True)

    home = tmp_path / "dagster"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    # Runs requested by sensors (landing_sensor sees the batch too) stay queued: the only run that executes
    # is the one the browser launches.
    config["concurrency"]["runs"]["tag_concurrency_limits"] = [{"key": "dagster/sensor_name", "limit": 0}]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("landing_batch", [key])

    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-m", "pipelines.definitions",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            # A shell that starts pytest in the background ignores SIGINT for its children: restore it.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, proc, log)
        yield {"url": url, "key": key, "home": home, "shots": tmp_path / "screenshots"}
    finally:
        # dagster dev stops its webserver, daemon and code servers on SIGINT; its session is ours alone.
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _ingest_runs(key: str) -> list:
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job", tags={"dagster/partition": key}))
        return [r for r in runs if "dagster/sensor_name" not in r.tags]


def test_ui_graph_launch_and_quality_plot(ui):
    from playwright.sync_api import expect, sync_playwright

    from pipelines.definitions import defs

    shots = ui["shots"]
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)

        # 1. The lineage graph, groups expanded, shows every asset of the code location.
        page.goto(ui["url"] + "/asset-groups", wait_until="networkidle")
        expect(page.get_by_text("Global asset lineage")).to_be_visible()
        skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
        with contextlib.suppress(Exception):  # shown only on some first visits
            skip.click(timeout=5_000)
        page.keyboard.press("Alt+e")  # "Expand all groups"
        wanted = Counter(key.path[-1] for key in defs.resolve_all_asset_keys())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shown = Counter(t.strip() for t in page.locator("svg foreignObject").all_text_contents() if t.strip())
            if all(shown[name] >= n for name, n in wanted.items()):
                break
            time.sleep(1)
        page.screenshot(path=str(shots / "asset-graph.png"))
        missing = {name: n - shown[name] for name, n in wanted.items() if shown[name] < n}
        assert not missing, f"assets missing from the graph: {missing} (shown: {dict(shown)})"

        # 2. The ingest job's launch dialog: pick the landed batch, launch one run.
        page.goto(ui["url"] + "/locations/pipelines.definitions/jobs/ingest_job", wait_until="networkidle")
        page.get_by_role("button", name="Materialize all").first.click()
        dialog = page.locator(".dagster-dialog")
        dialog.get_by_text("Select a partition or create one").click()
        page.get_by_text(ui["key"], exact=True).first.click()
        dialog.get_by_text("Launch runs to materialize").click()  # closes the partition picker
        page.screenshot(path=str(shots / "launch-dialog.png"))
        dialog.get_by_role("button", name="Launch 1 run").click()

        # 3. The run succeeds (the daemon dequeues it; steps run in subprocesses).
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and not [r for r in _ingest_runs(ui["key"]) if r.is_finished]:
            time.sleep(3)
        runs = _ingest_runs(ui["key"])
        assert runs, "the launch dialog started no ingest run"
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id}: {run.status}"
        page.goto(ui["url"] + f"/runs/{run.run_id}", wait_until="networkidle")
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        page.screenshot(path=str(shots / "run.png"))

        # 4. The quality-score histogram in the metadata of episode_scores for that batch.
        page.goto(ui["url"] + f"/assets/episode_scores?partition={ui['key']}", wait_until="networkidle")
        plot_key = f"episode_scores_{ui['key'].replace('/', '_')}_plot"
        expect(page.get_by_text(plot_key, exact=True)).to_be_visible()
        page.get_by_text("[Show Markdown]").first.click()
        image = page.locator("img[src^='data:image/png']").first
        expect(image).to_be_visible()
        assert image.evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=str(shots / "quality-plot.png"))
        browser.close()
    print(f"screenshots in {shots}")


def test_dg_list_defs_from_a_fresh_checkout():
    """`dg list defs` needs no DAGSTER_HOME (the README offers it as is)."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    dg_bin = Path(sys.executable).parent / "dg"
    proc = subprocess.run([str(dg_bin), "list", "defs"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("raw_log_files", "ingest_job", "nightly_curate", "landing_sensor", "run_failure_report"):
        assert name in proc.stdout, name
