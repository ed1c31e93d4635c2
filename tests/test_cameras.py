"""Cameras end to end: CompressedImage and Image topics ingested as encoded frames aligned to the control steps,
checked by validation (decodable, size, black, frozen), published as `datasets.Image`, and logged by the
simulated fleets."""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import datasets
import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from mcap_factory import CAMERA_TOPICS, MS, Episode, camera_pixels, latest_at_or_before, write_fleet_log
from foundations.catalog import config_dir
from foundations.ingest import MappingError, ingest_file, load_mapping
from foundations.ingest.raw_image import RawImageError, png_from_raw
from foundations.publish import publish
from foundations.recipes import load_recipe, select_episodes
from quality.thumbnails import thumbnail_strips_png
from quality.validation import validate_episodes

ANT = config_dir() / "sources" / "ant_fleet_ros2.yaml"
FRONT = "observation.images.front"


def mapping_with(tmp_path: Path, edit=None):
    doc = yaml.safe_load(ANT.read_text())
    if edit is not None:
        edit(doc)
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_mapping(path)


def raw_camera(d: dict) -> None:
    d["features"][FRONT] = [{"topic": CAMERA_TOPICS["raw"], "field": "data", "image": "raw", "shape": [64, 64, 3]}]
    d["streams"] = {CAMERA_TOPICS["raw"]: {"tolerance_s": 0.3}}


def validate(df: pl.DataFrame, mapping):
    return validate_episodes(df, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds, min_steps=10,
                             image_shapes=mapping.image_shapes)


def aligned_frames(log, topic: str) -> list[int]:
    """Index of the frame in force at every control step (latest within the 0.3 s tolerance)."""
    steps = np.concatenate([np.array(s) for s in log.episode_steps])
    return latest_at_or_before(log.times[topic], steps, 300 * MS).tolist()


def test_compressed_camera_survives_to_the_published_dataset(tmp_path, data_root):
    mapping = load_mapping("ant_fleet_ros2")
    log = write_fleet_log(tmp_path / "cam.mcap", [Episode(1.5), Episode(1.5, instruction="turn left")])
    result = ingest_file(log.path, mapping)
    assert result.quarantine.is_empty()
    ep = result.episodes
    assert ep.schema[FRONT] == pl.Binary
    # Each step holds the JPEG logged last before it, byte for byte (as-of, never interpolated).
    expected = [log.frames[i] for i in aligned_frames(log, CAMERA_TOPICS["compressed"])]
    assert ep[FRONT].to_list() == expected
    report = validate(ep, mapping)
    assert report.rejected.is_empty(), report.rejected["reason"].to_list()
    assert report.summary["image_shapes"] == {FRONT: "64x64x3"}

    recipe_path = tmp_path / "cams.yaml"
    recipe_path.write_text(yaml.safe_dump({"name": "cams", "sources": ["ant_fleet_ros2"], "splits": {"train": 1.0},
                                           "filters": {"min_quality_score": 0.0, "min_steps": 10}}))
    recipe = load_recipe(recipe_path)
    ids = ep["episode_id"].unique().sort()
    scores = pl.DataFrame({"episode_id": ids, "quality_score": [0.9] * ids.len()})
    selected, _ = select_episodes(recipe, report.accepted, scores)
    sources = pl.DataFrame({"source_file": ["cam.mcap"], "source_sha256": [ep["source_sha256"][0]]})
    version = publish(recipe, selected, sources=sources, validation=report.summary, quality_stats={},
                      code_version="test")

    ds = datasets.load_dataset(str(version.path), cache_dir=str(tmp_path / "hf"))["train"]
    assert isinstance(ds.features[FRONT], datasets.Image)
    row = ds[3]
    logged = ep.filter((pl.col("episode_id") == row["episode_id"]) & (pl.col("step") == row["step"]))[FRONT][0]
    np.testing.assert_array_equal(np.asarray(row[FRONT]), np.asarray(Image.open(io.BytesIO(logged))))
    raw = ds.cast_column(FRONT, datasets.Image(decode=False))
    assert raw[3][FRONT]["bytes"] == logged  # the JPEG as the camera encoded it: no re-encoding
    info = json.loads((version.path / "meta" / "info.json").read_text())
    assert info["features"][FRONT] == {"dtype": "image", "shape": [64, 64, 3], "names": ["height", "width", "channel"]}
    assert FRONT not in info["stats"]  # frames have no normalisation statistics
    card = (version.path / "README.md").read_text()
    assert "Cameras: `observation.images.front` (64×64×3" in card


def test_raw_image_topic_is_stored_as_lossless_png(tmp_path):
    mapping = mapping_with(tmp_path, raw_camera)
    log = write_fleet_log(tmp_path / "raw.mcap", [Episode(1.0)], camera="raw")
    result = ingest_file(log.path, mapping)
    assert result.quarantine.is_empty(), result.quarantine["reason"].to_list()
    frames = result.episodes[FRONT].to_list()
    for frame, k in zip(frames, aligned_frames(log, CAMERA_TOPICS["raw"])):
        assert frame.startswith(b"\x89PNG")
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(frame))), camera_pixels(k, 0))
    assert validate(result.episodes, mapping).rejected.is_empty()


def test_raw_frames_in_other_encodings_decode_to_the_same_pixels():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    padded = np.pad(rgb[:, :, ::-1].reshape(3, 15), ((0, 0), (0, 1))).tobytes()  # bgr8 rows padded to step 16
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_from_raw(3, 5, "bgr8", 16, padded)))), rgb)
    with pytest.raises(RawImageError, match="encoding 'yuv422' is not supported"):
        png_from_raw(3, 5, "yuv422", 10, bytes(30))
    with pytest.raises(RawImageError, match="needs 15 bytes per row"):
        png_from_raw(3, 5, "rgb8", 15, bytes(20))


def _black_after(t_s: float):
    """Dark sensor noise (so black, but not also frozen) after t_s."""
    dark = lambda k: np.random.default_rng(k).integers(0, 4, (64, 64, 3)).astype(np.uint8)  # noqa: E731
    return lambda k, t: dark(k) if k * 0.25 > t_s else camera_pixels(k, t)


def _frozen_after(t_s: float):
    return lambda k, t: camera_pixels(min(k, int(t_s / 0.25)), t)


@pytest.mark.parametrize("pixels, check, words", [
    (_black_after(1.0), "frame_black", "is black"),
    (_frozen_after(0.5), "frame_frozen", "is frozen (the same frame for more than 2.0 s)"),
    (lambda k, t: camera_pixels(k, t)[:32, :48], "frame_size", "frames are not 64x64x3"),
])
def test_bad_camera_quarantines_the_episode_with_a_reason(tmp_path, pixels, check, words):
    mapping = load_mapping("ant_fleet_ros2")
    log = write_fleet_log(tmp_path / "bad.mcap", [Episode(3.5)], pixels=pixels)
    report = validate(ingest_file(log.path, mapping).episodes, mapping)
    assert report.accepted.is_empty()
    assert report.rejected["check"].to_list() == [check]
    assert words in report.rejected["reason"][0] and FRONT in report.rejected["reason"][0]


def test_undecodable_and_missing_frames_are_quarantined(tmp_path):
    mapping = load_mapping("ant_fleet_ros2")
    log = write_fleet_log(tmp_path / "ok.mcap", [Episode(1.0), Episode(1.0)])
    ep = ingest_file(log.path, mapping).episodes
    first, second = ep["episode_id"].unique().sort().to_list()
    broken = ep.with_columns(
        pl.when((pl.col("episode_id") == first) & (pl.col("step") == 5)).then(pl.lit(b"not a jpeg"))
        .when((pl.col("episode_id") == second) & (pl.col("step") == 7)).then(pl.lit(None, pl.Binary))
        .otherwise(pl.col(FRONT)).alias(FRONT))
    rejected = validate(broken, mapping).rejected
    assert rejected.select("episode_id", "check").rows() == [(first, "frame_decodable"), (second, "not_null")]
    assert "frames do not decode as images" in rejected["reason"][0]


def test_camera_without_image_key_or_in_a_vector_feature_is_refused(tmp_path):
    with pytest.raises(MappingError, match="a camera feature is one field spec with image"):
        mapping_with(tmp_path, lambda d: d["features"].update({FRONT: [{"topic": "/cam", "field": "data"}]}))
    with pytest.raises(MappingError, match="image fields go in features named 'observation.images.<camera>'"):
        mapping_with(tmp_path, lambda d: d["features"].update(
            {"observation.cam": [{"topic": "/cam", "field": "data", "image": "compressed"}]}))
    with pytest.raises(MappingError, match="shape: .* only goes with image"):
        mapping_with(tmp_path, lambda d: d["features"]["observation.pose"][0].update(shape=[1, 2, 3]))


def test_simulated_fleet_logs_a_camera_and_plants_camera_faults(tmp_path):
    from simulator.arm.fleet import simulate_fleet
    from simulator.driver import read_ground_truth

    out = tmp_path / "arm"
    simulate_fleet(3, out, seed=2, fault_rate=0.0, episode_steps=100, camera_fault_rate=0.67)
    truth = {r["file"]: r for r in read_ground_truth(out)}
    assert sorted(str(r["camera_fault"]) for r in truth.values()) == ["None", "camera_black", "camera_frozen"]
    mapping = load_mapping("arm_fleet_ros2")
    results = {f: ingest_file(out / f, mapping) for f in truth}
    assert all(r.quarantine.is_empty() for r in results.values())
    table = pl.concat([r.episodes for r in results.values()])
    report = validate(table, mapping)
    found = {row["source_file"]: row["check"] for row in report.rejected.iter_rows(named=True)}
    planted = {f: {"camera_black": "frame_black", "camera_frozen": "frame_frozen"}[r["camera_fault"]]
               for f, r in truth.items() if r["camera_fault"]}
    assert found == planted
    png = thumbnail_strips_png(table, "observation.images.top", dict(report.rejected.select("episode_id", "check").rows()))
    assert Image.open(io.BytesIO(png)).size[1] == 3 * 52  # one 48-pixel row (plus margins) per episode

    plain = tmp_path / "plain"
    simulate_fleet(1, plain, seed=2, fault_rate=0.0, episode_steps=20, camera=False)
    plain_result = ingest_file(next(plain.glob("*.mcap")), mapping)  # the camera stream is optional in the mapping
    assert plain_result.quarantine.is_empty() and "observation.images.top" not in plain_result.episodes.columns


def test_without_gl_the_camera_is_left_out_with_one_warning(monkeypatch):
    from simulator import camera
    from simulator.camera import CameraSpec, add_camera
    from simulator.mcap_log import EpisodeLog

    monkeypatch.setattr(camera, "_NO_GL", [])

    def no_gl():
        raise ImportError("no EGL here")

    log = EpisodeLog({}, 0, 10**9, command="/cmd", joints="/joints", states=())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_camera(log, CameraSpec("/cam"), "no-gl-test", no_gl, np.zeros((11, 2)), np.arange(11) * 10**8,
                   np.random.default_rng(0))
    assert log.camera is None and "/cam" not in log.topics
    assert [str(w.message).split(";")[0] for w in caught] == [
        "no OpenGL backend for MuJoCo's renderer (ImportError: no EGL here)"]
