"""A simulated fleet's camera, end to end: logged by MuJoCo's renderer, ingested and validated with the
fleet's real mapping, published as `datasets.Image`, exported to LeRobot v3 and Minari and loaded back with
those libraries: every frame a learner gets equals the published frame."""
from __future__ import annotations

import io

import datasets
import numpy as np
import polars as pl
import pytest
from PIL import Image

from test_export import load_with_lerobot
from test_publish import write_recipe
from foundations.export import export
from foundations.ingest import ingest_files, load_mapping
from foundations.publish import publish
from foundations.recipes import load_recipe, select_episodes
from quality.validation import validate_episodes

SOURCE = "arm_fleet_ros2"


def _pixels(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def test_simulated_camera_survives_to_the_lerobot_and_minari_exports(tmp_path, data_root, monkeypatch):
    import minari

    from simulator.embodiments import get_embodiment

    mapping = load_mapping(SOURCE)
    (camera, _), = mapping.image_features.items()
    fleet = tmp_path / "fleet"
    get_embodiment(mapping.robot).simulate_fleet(3, fleet, seed=4, fault_rate=0.0, episode_steps=60)
    result = ingest_files(sorted(fleet.rglob("*.mcap")), mapping, progress=False, workers=1, batch_dir=fleet)
    assert result.quarantine.is_empty(), result.quarantine["reason"].to_list()
    if camera not in result.episodes.columns:  # the simulator warned: no GL backend, so no camera was logged
        pytest.skip("no OpenGL backend for MuJoCo's renderer on this machine: the fleet logged no camera")
    report = validate_episodes(result.episodes, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds,
                               min_steps=10, image_shapes=mapping.image_shapes)
    assert report.rejected.is_empty(), report.rejected["reason"].to_list()
    assert report.accepted[camera].null_count() == 0

    recipe = load_recipe(write_recipe(tmp_path, "camera_e2e", sources=[SOURCE], splits={"train": 1.0}))
    ids = report.accepted["episode_id"].unique().sort()
    selected, _ = select_episodes(recipe, report.accepted, pl.DataFrame({"episode_id": ids, "quality_score": 0.9}))
    version = publish(recipe, selected, sources=result.episodes.select("source_file", "source_sha256").unique(),
                      validation=report.summary, quality_stats={}, code_version="test")
    published = datasets.load_dataset(str(version.path), cache_dir=str(tmp_path / "hf"))["train"]
    assert isinstance(published.features[camera], datasets.Image)
    rows = pl.read_parquet(sorted((version.path / "data").glob("*.parquet")))
    frames = {(r["episode_id"], r["step"]): r[camera]["bytes"] for r in rows.iter_rows(named=True)}
    logged = {(r["episode_id"], r["step"]): r[camera] for r in selected.iter_rows(named=True)}
    assert frames == logged  # the JPEG bytes as the robot logged them

    lerobot = export(recipe.name, "latest", "lerobot", tmp_path / "lerobot")
    assert lerobot.left_out == {}
    items, loaded = load_with_lerobot(lerobot.path, tmp_path)
    assert loaded["camera_keys"] == [camera] and loaded["len"] == rows.height
    for i in range(loaded["len"]):
        episode = loaded["episodes"][int(items["episode_index"][i])]["episode_id"]
        got = (items[camera][i].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(got, _pixels(frames[(episode, int(items["frame_index"][i]))]))

    out = export(recipe.name, "latest", "minari", tmp_path / "minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ds = minari.load_dataset(out.path.relative_to(tmp_path / "minari").as_posix())
    assert ds.total_episodes == ids.len()
    metadata = ds.storage.get_episode_metadata(range(ds.total_episodes))
    for episode, meta in zip(ds.iterate_episodes(), metadata):
        want = rows.filter(pl.col("episode_id") == meta["episode_id"]).sort("step")
        got = episode.observations["images"][camera.rsplit(".", 1)[-1]]
        np.testing.assert_array_equal(got, np.stack([_pixels(f["bytes"]) for f in want[camera].to_list()]))
