"""Optional streams (`streams: {<topic>: {optional: true}}`): a file without the camera is ingested without
its feature, the absence recorded; a batch mixing files with and without it validates and publishes with
nulls for the camera-less episodes; a missing required topic is still quarantined."""
from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
import pytest
import yaml

from mcap_factory import CAMERA_TOPICS, Episode, write_fleet_log
from foundations.catalog import config_dir
from foundations.ingest import MappingError, ingest_file, ingest_files, load_mapping
from foundations.publish import publish, resolve_version
from foundations.recipes import load_recipe, select_episodes
from quality.validation import validate_episodes

FRONT = "observation.images.front"
CAMERA = CAMERA_TOPICS["compressed"]


def validate(df: pl.DataFrame, mapping):
    return validate_episodes(df, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds, min_steps=10,
                             image_shapes=mapping.image_shapes)


@pytest.mark.parametrize("fleet, source, camera", [("simulator.fleet", "ant_fleet_ros2", "observation.images.front"),
                                                   ("simulator.arm.fleet", "arm_fleet_ros2", "observation.images.top")])
def test_fleet_without_gl_camera_ingests_without_its_feature(tmp_path, fleet, source, camera):
    import importlib

    simulate_fleet = importlib.import_module(fleet).simulate_fleet
    simulate_fleet(1, tmp_path, seed=3, fault_rate=0.0, episode_steps=40, camera=False)
    mapping = load_mapping(source)
    assert mapping.image_features[camera].topic in mapping.optional_topics
    result = ingest_file(next(tmp_path.glob("*.mcap")), mapping)
    assert result.quarantine.is_empty(), result.quarantine["reason"].to_list()
    assert result.episodes.height > 0 and camera not in result.episodes.columns
    assert result.trims["absent_streams"].to_list() == [[mapping.image_features[camera].topic]]


def test_batch_mixing_files_with_and_without_the_camera_validates_and_publishes(tmp_path, data_root):
    mapping = load_mapping("ant_fleet_ros2")
    batch = tmp_path / "batch"
    batch.mkdir()
    with_cam = write_fleet_log(batch / "cam.mcap", [Episode(1.5)]).path
    without = write_fleet_log(batch / "nocam.mcap", [Episode(1.5, instruction="turn left")], camera=None).path
    result = ingest_files([with_cam, without], mapping, progress=False, workers=1, batch_dir=batch)
    assert result.quarantine.is_empty(), result.quarantine["reason"].to_list()
    ep = result.episodes
    assert ep.schema[FRONT] == pl.Binary
    frames = ep.group_by("source_file").agg(pl.col(FRONT).null_count().alias("nulls"), pl.len().alias("n"))
    assert dict(frames.select("source_file", pl.col("nulls") == pl.col("n")).rows()) == {"cam.mcap": False,
                                                                                       "nocam.mcap": True}
    absent = dict(result.trims.select("source_file", "absent_streams").rows())
    assert absent == {"cam.mcap": [], "nocam.mcap": [CAMERA]}

    report = validate(ep, mapping)
    assert report.rejected.is_empty(), report.rejected["reason"].to_list()
    assert report.accepted["episode_id"].n_unique() == 2
    # A camera that drops frames mid-episode still fails: only an episode with no frame at all has no camera.
    cam_id = ep.filter(pl.col("source_file") == "cam.mcap")["episode_id"][0]
    gap = ep.with_columns(pl.when((pl.col("episode_id") == cam_id) & (pl.col("step") == 5)).then(None)
                          .otherwise(pl.col(FRONT)).alias(FRONT))
    rejected = validate(gap, mapping).rejected
    assert rejected.select("episode_id", "check").rows() == [(cam_id, "not_null")]

    recipe_path = tmp_path / "mixed.yaml"
    recipe_path.write_text(yaml.safe_dump({"name": "mixed", "sources": ["ant_fleet_ros2"], "splits": {"train": 1.0},
                                           "filters": {"min_quality_score": 0.0, "min_steps": 10}}))
    ids = ep["episode_id"].unique().sort()
    scores = pl.DataFrame({"episode_id": ids, "quality_score": [0.9] * ids.len()})
    selected, _ = select_episodes(load_recipe(recipe_path), report.accepted, scores)
    sources = ep.select("source_file", "source_sha256").unique()
    version = publish(load_recipe(recipe_path), selected, sources=sources, validation=report.summary,
                      quality_stats={}, code_version="test")
    ds = datasets.load_dataset(str(version.path), cache_dir=str(tmp_path / "hf"))["train"]
    assert isinstance(ds.features[FRONT], datasets.Image)
    rows = pl.DataFrame({"src": ds["source_file"], "has": [f is not None for f in ds.cast_column(
        FRONT, datasets.Image(decode=False))[FRONT]]})
    assert dict(rows.group_by("src").agg(pl.col("has").all()).rows()) == {"cam.mcap": True, "nocam.mcap": False}
    assert dict(rows.group_by("src").agg(pl.col("has").any()).rows()) == {"cam.mcap": True, "nocam.mcap": False}
    # The exports carry a camera only where every step has a frame: this one is left out, with the reason.
    from foundations.export.published import load_published

    vectors, images, left_out = load_published(resolve_version("mixed", "latest")).columns()
    assert images == [] and "no frame" in left_out[FRONT] and "action" in vectors


def _mapping(tmp_path: Path, edit) -> object:
    doc = yaml.safe_load((config_dir() / "sources" / "ant_fleet_ros2.yaml").read_text())
    edit(doc)
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_mapping(path)


def test_a_required_camera_is_still_missing_topic(tmp_path):
    mapping = _mapping(tmp_path, lambda d: d["streams"][CAMERA].pop("optional"))
    assert mapping.optional_topics == []
    log = write_fleet_log(tmp_path / "nocam.mcap", [Episode(1.5)], camera=None)
    result = ingest_file(log.path, mapping)
    assert result.episodes.is_empty()
    assert result.quarantine["check"].to_list() == ["missing_topic"] and CAMERA in result.quarantine["reason"][0]


def test_only_a_topic_feeding_cameras_alone_may_be_optional(tmp_path):
    with pytest.raises(MappingError, match=r"streams\./odom\.optional.*camera features alone"):
        _mapping(tmp_path, lambda d: d["streams"].update({"/odom": {"optional": True}}))


def test_assets_stage_and_promote_a_mixed_batch_and_status_shows_the_absent_camera(tmp_path, instance):
    import dagster as dg

    from foundations import landing, storage
    from pipelines.assets.ingest import episodes, raw_log_files
    from pipelines.assets.quality import promote_validation, validate_batch
    from pipelines.resources import DataRoot
    from pipelines.status import file_status

    logs = [write_fleet_log(tmp_path / "cam.mcap", [Episode(1.5)]).path,
            write_fleet_log(tmp_path / "nocam.mcap", [Episode(1.5)], camera=None).path]
    key = landing.land(logs, "ant_fleet_ros2")
    instance.add_dynamic_partitions("landing_batch", [key])
    run = dg.materialize([raw_log_files, episodes, validate_batch, promote_validation], instance=instance,
                         partition_key=key, resources={"data_root": DataRoot()})
    assert run.success
    accepted = storage.read_partition("validated_episodes", key)
    frames = accepted.group_by("source_file").agg(pl.col(FRONT).is_null().all().alias("no_camera"))
    assert dict(frames.rows()) == {"cam.mcap": False, "nocam.mcap": True}
    shown = {row["file"]: [ep["absent_streams"] for ep in row["episodes"]] for row in file_status().iter_rows(named=True)}
    assert shown == {"cam.mcap": [[]], "nocam.mcap": [[CAMERA]]}
