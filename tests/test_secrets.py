"""Secrets stay secret: with HF_TOKEN and OPENAI_API_KEY set to distinctive values, a full ingest and
publish leaves neither value in the Dagster event log, the captured logs, the data root or DAGSTER_HOME."""
from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import dagster as dg
import huggingface_hub
import pyarrow.parquet as pq
import pytest
from dagster._serdes import serialize_value

from foundations import landing, storage
from foundations.catalog import RECIPES_ENV, config_dir
from foundations.publish import list_versions
from pipelines.runner import dagster_home, run_job

SOURCE = "ant_fleet_ros2"
publish_one_job = dg.define_asset_job("publish_ant_skills", selection=dg.AssetSelection.assets(["hub", "ant_skills"]))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leaks(root: Path, secrets: list[str]) -> list[str]:
    """Files under `root` holding any secret: in their bytes, or, for parquet (whose pages may be
    compressed), in the schema metadata, the footer key-values or any value read back as text."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = [data.decode("latin-1")]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            texts.append(str(pq.read_metadata(path).metadata))
            texts += [str(col.to_pylist()) for col in table.columns]
        found += [f"{path}: {s[:6]}…" for s in secrets if any(s in t for t in texts)]
    return found


def test_the_scan_finds_a_planted_secret(tmp_path):
    """The scanner itself can fail: a secret in a compressed parquet column and in a text file is found."""
    import polars as pl

    secret = f"sk-planted-{uuid.uuid4().hex}"
    pl.DataFrame({"x": ["a" * 50] * 1000 + [secret]}).write_parquet(tmp_path / "t.parquet", compression="zstd", statistics=False)
    (tmp_path / "log.txt").write_text(f"header\nBearer {secret}\n")
    assert len(_leaks(tmp_path, [secret])) == 2


def test_no_token_value_in_logs_metadata_cards_or_manifests(tmp_path, monkeypatch, data_root, smollm2_dir, capfd):
    hf_token = f"hf_SecretProbe{uuid.uuid4().hex}"
    api_key = f"sk-SecretProbe{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", hf_token)
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    dagster_home()
    from simulator.embodiments import get_embodiment

    fleet = tmp_path / "fleet"
    get_embodiment("ant").simulate_fleet(3, fleet, seed=5, fault_rate=0.0, episode_steps=60)
    from pipelines.definitions import defs as base

    defs = dg.Definitions.merge(base, dg.Definitions(jobs=[publish_one_job]))
    resources = {
        # Both secrets by reference: the env var's name is configured, never its value.
        "hub": {"token": {"env": "HF_TOKEN"}},
        "referee": {"model_dir": str(smollm2_dir), "segment_steps": 50, "api_key_env": "OPENAI_API_KEY"},
    }
    with dg.DagsterInstance.get() as instance:
        key = landing.land(sorted(fleet.glob("*.mcap")), SOURCE, "b1")
        instance.add_dynamic_partitions("landing_batch", [key])
        ingest = run_job(defs, instance, "ingest_job", partition_key=key, resources=resources, log_level="DEBUG")
        publish = run_job(defs, instance, "publish_ant_skills", resources={"hub": resources["hub"]}, log_level="DEBUG")
        assert storage.read_partition("validated_episodes", key).height > 0
        assert [v["version"] for v in list_versions("ant_skills")] == ["1.0.0"]

        # A push that fails (the Hub endpoint is a closed loopback port) must not leak the token in its error.
        # The recipe copy names a Hub repo and weighs the referee otherwise, so a new version is made and pushed with the token.
        recipes = tmp_path / "recipes"
        shutil.copytree(config_dir(), recipes)
        card = recipes / "ant_skills.yaml"
        card.write_text(card.read_text().replace("hub_repo: null", "hub_repo: robocurate-test/ant_skills")
                        .replace("referee_weight: 1.0", "referee_weight: 0.5"))
        monkeypatch.setenv(RECIPES_ENV, str(recipes))
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
        pushed = defs.resolve_job_def("publish_ant_skills").execute_in_process(
            instance=instance, raise_on_error=False, run_config={"resources": {"hub": {"config": resources["hub"]}}})
        failure = [e for e in pushed.all_events if e.is_step_failure]
        assert not pushed.success and failure, "the push to a closed port must fail (proof the token was configured)"
        message = failure[0].step_failure_data.error.to_string()
        assert "push of ant_skills 1.1.0 to the Hub repo robocurate-test/ant_skills failed" in message
        assert "Connection refused" in message and hf_token not in message

        runs = instance.get_runs()
        assert {r.run_id for r in runs} >= {ingest.run_id, publish.run_id}
        for run in runs:
            # The stored run config names the variable only.
            assert run.run_config["resources"]["hub"]["config"]["token"] == {"env": "HF_TOKEN"}
            events = instance.all_logs(run.run_id)
            assert events
            text = "\n".join(serialize_value(e) for e in events)
            assert hf_token not in text and api_key not in text, f"a token is in the event log of run {run.run_id}"

    out, err = capfd.readouterr()
    assert hf_token not in out + err and api_key not in out + err
    secrets = [hf_token, api_key]
    # Cards, manifests, version.json, parquet tables and their metadata, plots, caches.
    published = list((storage.area("hub")).rglob("README.md"))
    assert published, "the publish must have written a card for the scan to mean anything"
    assert _leaks(data_root, secrets) == []
    # The instance's databases, run storage and captured compute logs.
    assert any(home.rglob("*.db")), "the embedded instance keeps its event log in SQLite under DAGSTER_HOME"
    assert any(p.suffix in (".out", ".err") for p in home.rglob("compute_logs/*")), "no captured compute logs to scan"
    assert _leaks(home, secrets) == []
