"""Alignment as real logs need it: staggered streams trimmed and recorded, header clocks, joints by
name, indexed paths, lineage relative to the landing batch, fingerprints that follow the robot profile."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from mcap_factory import MS, T0, Episode, action_values, joint_values, latest_at_or_before, odom_z, write_fleet_log
from foundations.catalog import config_dir
from foundations.ingest import TRIMS_SCHEMA, ingest_file, ingest_files, load_mapping
from foundations.schema import episode_id
from foundations.storage import sha256_file
from quality.validation import validate_episodes

ANT = config_dir() / "sources" / "ant_fleet_ros2.yaml"


@pytest.fixture(scope="module")
def mapping():
    return load_mapping("ant_fleet_ros2")


def mapping_with(tmp_path: Path, edit=None):
    doc = yaml.safe_load(ANT.read_text())
    if edit is not None:
        edit(doc)
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_mapping(path)


def validate(result, mapping):
    return validate_episodes(result.episodes, rate_hz=mapping.control.rate_hz, action_bounds=mapping.action_bounds,
                             min_steps=20, max_steps=10000)


def joints(ep: pl.DataFrame) -> np.ndarray:
    return np.array(ep["observation.state"].to_list())[:, 5:13]


def test_staggered_streams_are_trimmed_and_recorded(tmp_path, mapping):
    # The first command comes before the first state: /joint_states from 0.05 s, /odom from 0.12 s;
    # /joint_states stops at 1.71 s while commands go on to 1.95 s.
    log = write_fleet_log(tmp_path / "late.mcap", [Episode(2.0)], markers=False,
                          starts_s={"/odom": 0.12, "/joint_states": 0.05}, stops_s={"/joint_states": 1.71})
    result = ingest_file(log.path, mapping)
    assert result.quarantine.height == 0
    sha = sha256_file(log.path)
    assert result.trims.schema == pl.Schema(TRIMS_SCHEMA)
    assert result.trims.to_dicts() == [{
        "episode_id": episode_id(sha, 0), "source": "ant_fleet_ros2", "source_file": "late.mcap", "source_sha256": sha,
        "trimmed_start_steps": 3, "trimmed_start_s": pytest.approx(0.15), "start_stream": "/odom",  # first /odom at 0.125 s
        "trimmed_end_steps": 5, "trimmed_end_s": pytest.approx(0.25), "end_stream": "/joint_states",  # last at 1.703 s + 30 ms
        "truncated": False, "truncated_reason": None, "absent_streams": [],
    }]
    ep = result.episodes
    kept = np.array(log.episode_steps[0][3:35])
    assert ep.height == 32 and ep["step"].to_list() == list(range(32))
    np.testing.assert_allclose(ep["timestamp"].to_numpy(), (kept - kept[0]) / 1e9)
    assert ep["is_first"].to_list() == [True] + [False] * 31 and ep["is_last"].to_list() == [False] * 31 + [True]
    j_idx = latest_at_or_before(log.times["/joint_states"], kept, 30 * MS)
    np.testing.assert_allclose(joints(ep), [joint_values(t) for t in np.array(log.times["/joint_states"])[j_idx]], atol=1e-4)
    report = validate(result, mapping)
    assert report.rejected.height == 0 and report.accepted.height == 32


def test_clean_file_has_zero_trims(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "clean.mcap", [Episode(1.0), Episode(1.0, "turn left")])
    trims = ingest_file(log.path, mapping).trims
    assert trims.height == 2
    assert trims["trimmed_start_steps"].to_list() == trims["trimmed_end_steps"].to_list() == [0, 0]
    assert trims["trimmed_start_s"].to_list() == trims["trimmed_end_s"].to_list() == [0.0, 0.0]
    assert trims["start_stream"].to_list() == trims["end_stream"].to_list() == [None, None]


def test_inner_gap_stays_null_after_a_start_trim(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "gap.mcap", [Episode(2.0)], markers=False, starts_s={"/odom": 0.12},
                          joint_gap=(0.5, 0.8))
    result = ingest_file(log.path, mapping)
    assert result.trims["trimmed_start_steps"].to_list() == [3] and result.trims["trimmed_end_steps"].to_list() == [0]
    assert result.episodes["observation.state"].null_count() == 6  # 0.55 .. 0.80 s, never filled
    report = validate(result, mapping)
    assert report.accepted.height == 0 and "not_null" in report.rejected["check"].to_list()


def test_episode_before_a_stream_starts_is_quarantined(tmp_path, mapping):
    # Episodes at 0-1 s and 1.5-2.5 s; /odom only starts at 1.2 s: the first has no step with every stream.
    log = write_fleet_log(tmp_path / "odom_late.mcap", [Episode(1.0), Episode(1.0, "turn left")], starts_s={"/odom": 1.2})
    result = ingest_file(log.path, mapping)
    sha = sha256_file(log.path)
    row = result.quarantine.to_dicts()
    assert [(r["episode_id"], r["check"]) for r in row] == [(episode_id(sha, 0), "trimmed_empty")]
    assert "/odom starts at 1.2" in row[0]["reason"] and "check the recording" in row[0]["reason"]
    assert result.episodes["episode_id"].unique().to_list() == [episode_id(sha, 1)] and result.episodes.height == 20
    assert result.trims["episode_id"].to_list() == [episode_id(sha, 1)]
    assert result.trims["trimmed_start_steps"].to_list() == [0]


def test_header_clock_aligns_on_sample_time(tmp_path, mapping):
    # The recorder logs each joint message 45 ms after its header stamp (a slow bridge).
    log = write_fleet_log(tmp_path / "lag.mcap", [Episode(1.0)], markers=False, log_lag_ms={"/joint_states": 45})
    steps = np.array(log.episode_steps[0])

    by_log = ingest_file(log.path, mapping)  # log time: the step sees the message stamped 47 ms earlier
    assert by_log.trims["trimmed_start_steps"].to_list() == [1]  # the first joint message is logged at 28 ms
    assert by_log.trims["start_stream"].to_list() == ["/joint_states"]
    np.testing.assert_allclose(joints(by_log.episodes), [joint_values(t - 47 * MS) for t in steps[1:]], atol=1e-4)

    for edit in (lambda d: d.update(streams={"/joint_states": {"clock": "header"}}), lambda d: d.update(clock="header")):
        by_stamp = ingest_file(log.path, mapping_with(tmp_path, edit))  # header: the sample 7 ms before the step
        assert by_stamp.quarantine.height == 0 and by_stamp.episodes.height == 20
        assert by_stamp.trims["trimmed_start_steps"].to_list() == [0]
        np.testing.assert_allclose(joints(by_stamp.episodes), [joint_values(t - 7 * MS) for t in steps], atol=1e-4)
        # /cmd_joint (Float64MultiArray) has no header: it keeps log time, so the steps are unchanged.
        np.testing.assert_allclose(by_stamp.episodes["timestamp"].to_numpy(), (steps - steps[0]) / 1e9)


def test_header_clock_on_a_headerless_stream_is_a_mismatch(tmp_path):
    log = write_fleet_log(tmp_path / "ok.mcap", [Episode(0.5)])
    bad = mapping_with(tmp_path, lambda d: d.update(streams={"/cmd_joint": {"clock": "header"}}))
    row = ingest_file(log.path, bad).quarantine.to_dicts()
    assert [r["check"] for r in row] == ["field_mismatch"]
    assert "/cmd_joint messages (type std_msgs/msg/Float64MultiArray) have no header stamp" in row[0]["reason"]
    assert "clock: log_time" in row[0]["reason"]


def test_unset_header_stamps_are_quarantined(tmp_path):
    log = write_fleet_log(tmp_path / "zero.mcap", [Episode(0.5)], unset_stamps=("/odom",))
    result = ingest_file(log.path, mapping_with(tmp_path, lambda d: d.update(clock="header")))
    row = result.quarantine.to_dicts()
    assert [r["check"] for r in row] == ["header_stamp"] and row[0]["episode_id"] is None
    assert "/odom messages have an unset (zero) header stamp" in row[0]["reason"]


def test_joints_are_selected_by_name_whatever_their_order(tmp_path, mapping):
    plain = write_fleet_log(tmp_path / "plain.mcap", [Episode(1.0)])
    shuffled = write_fleet_log(tmp_path / "shuffled.mcap", [Episode(1.0)], joint_order=[6, 1, 7, 0, 3, 2, 5, 4])
    a, b = ingest_file(plain.path, mapping, sha256="a" * 64), ingest_file(shuffled.path, mapping, sha256="a" * 64)
    assert b.quarantine.height == 0
    assert a.episodes.drop("source_file").equals(b.episodes.drop("source_file"))
    steps = np.array(plain.episode_steps[0])
    j_times = np.array(plain.times["/joint_states"])[latest_at_or_before(plain.times["/joint_states"], steps, 30 * MS)]
    np.testing.assert_allclose(joints(b.episodes), [joint_values(t) for t in j_times], atol=1e-4)  # hip_1 .. ankle_4


def test_indexed_field_paths(tmp_path, mapping):
    def cov(d):
        d["features"]["observation.cov"] = [{"topic": "/odom", "field": "pose.covariance[7]"},
                                            {"topic": "/cmd_joint", "field": "data[3]"}]

    log = write_fleet_log(tmp_path / "idx.mcap", [Episode(1.0)], markers=False)
    result = ingest_file(log.path, mapping_with(tmp_path, cov))
    steps = np.array(log.episode_steps[0])
    o_times = np.array(log.times["/odom"])[latest_at_or_before(log.times["/odom"], steps, 30 * MS)]
    got = np.array(result.episodes["observation.cov"].to_list())
    np.testing.assert_allclose(got[:, 0], [odom_z(t) + 7 for t in o_times], rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], [action_values(t)[3] for t in steps], rtol=1e-6)

    past = mapping_with(tmp_path, lambda d: d["features"].update({"observation.cov": [{"topic": "/odom", "field": "pose.covariance[36]"}]}))
    row = ingest_file(log.path, past).quarantine.to_dicts()
    assert [r["check"] for r in row] == ["field_mismatch"]
    assert "field pose.covariance[36] of /odom (type nav_msgs/msg/Odometry) indexes past the end of its array" in row[0]["reason"]


SITE_B = {
    "name": "site_b", "robot": "ant", "format": "mcap", "clock": "header",
    "robot_id": {"metadata": "robot", "key": "robot_id", "folder": 0},
    "control": {"topic": "/robot/cmd", "rate_hz": 20, "tolerance_s": 0.03},
    "streams": {"/base/pose": {"tolerance_s": 0.06}},
    "instruction": {"topic": "/task"},
    "episode_markers": {"topic": "/robot/events", "start": "episode_start", "end": "episode_end", "terminal": "fall_detected"},
    "features": {
        "action": [{"topic": "/robot/cmd", "field": "data", "size": 8}],
        "observation.state": [
            {"topic": "/base/odom", "field": "pose.pose.position.z"},
            {"topic": "/base/odom", "field": "pose.pose.orientation", "components": ["w", "x", "y", "z"]},
            {"topic": "/robot/joints", "field": "position", "names": ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]},
            {"topic": "/base/odom", "field": "twist.twist.linear", "components": ["x", "y", "z"]},
            {"topic": "/base/odom", "field": "twist.twist.angular", "components": ["x", "y", "z"]},
            {"topic": "/robot/joints", "field": "velocity", "names": ["hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4"]},
        ],
        "observation.pose": [
            {"topic": "/base/pose", "field": "pose.position", "components": ["x", "y"]},
            {"topic": "/base/pose", "field": "pose.orientation", "transform": "yaw_from_quaternion"},
        ],
    },
}
SITE_B_TOPICS = {"/cmd_joint": "/robot/cmd", "/joint_states": "/robot/joints", "/odom": "/base/odom",
                 "/instruction": "/task", "/events": "/robot/events"}


def test_second_site_nested_batch_with_reused_file_names(tmp_path):
    """Other topic names and types, header clock, joints in another order, state streams that start after the
    first command, and `run_00000.mcap` in every robot's folder: every clean episode accepted, lineage distinct."""
    path = tmp_path / "site_b.yaml"
    path.write_text(yaml.safe_dump(SITE_B, sort_keys=False))
    site = load_mapping(path)
    batch = tmp_path / "landing" / "site_b" / "batch_01"
    files = []
    for i, robot in enumerate(["robot_a", "robot_b"]):
        (batch / robot).mkdir(parents=True)
        files.append(write_fleet_log(
            batch / robot / "run_00000.mcap", [Episode(1.5), Episode(1.5, "turn left")], robot_id=robot, rename=SITE_B_TOPICS,
            pose_topic="/base/pose", joint_order=[7, 6, 5, 4, 3, 2, 1, 0] if i else None, log_lag_ms={"/joint_states": 40},
            starts_s={"/odom": 0.08 + 0.05 * i, "/base/pose": 0.08 + 0.05 * i, "/joint_states": 0.02}).path)
    (batch / "robot_c").mkdir()
    broken = batch / "robot_c" / "run_00000.mcap"
    broken.write_bytes(files[0].read_bytes()[:500])

    result = ingest_files([*files, broken], site, progress=False, batch_dir=batch)
    assert result.quarantine["source_file"].to_list() == ["robot_c/run_00000.mcap"]
    assert result.quarantine["check"].to_list() == ["unreadable_mcap"]
    ep = result.episodes
    # A log without the metadata record: the robot's folder names it.
    bare = write_fleet_log(batch / "robot_a" / "run_00001.mcap", [Episode(1.5)], robot_id=None, rename=SITE_B_TOPICS,
                           pose_topic="/base/pose")
    no_meta = ingest_files([bare.path], site, progress=False, batch_dir=batch)
    assert no_meta.episodes["robot_id"].unique().to_list() == ["robot_a"]
    assert ep.group_by("source_file").agg(pl.col("episode_id").n_unique()).sort("source_file").rows() == [
        ("robot_a/run_00000.mcap", 2), ("robot_b/run_00000.mcap", 2)]
    assert ep["episode_id"].n_unique() == 4 and set(ep["robot_id"]) == {"robot_a", "robot_b"}
    assert set(ep["source"]) == {"site_b"}
    trims = result.trims.sort("source_file", "episode_id")
    assert trims["source_file"].to_list() == ["robot_a/run_00000.mcap"] * 2 + ["robot_b/run_00000.mcap"] * 2
    assert trims["start_stream"].to_list() == ["/base/odom", None, "/base/odom", None]  # odom and pose tie: mapping order
    assert trims["trimmed_start_steps"].to_list() == [2, 0, 3, 0]
    report = validate(result, site)
    assert report.rejected.height == 0 and report.accepted["episode_id"].n_unique() == 4
    # Joints by name: hip_1 .. ankle_4 hold base + 0.0 .. 0.7 in both files, though robot_b lists them reversed.
    np.testing.assert_allclose(np.diff(joints(ep), axis=1), 0.1, atol=1e-3)


def test_slow_stream_gets_its_own_tolerance(tmp_path):
    def pose_at_10hz(d, tolerance=None):
        d["features"]["observation.pose"] = [
            {"topic": "/base_pose", "field": "pose.position", "components": ["x", "y"]},
            {"topic": "/base_pose", "field": "pose.orientation", "transform": "yaw_from_quaternion"}]
        if tolerance is not None:
            d.setdefault("streams", {})["/base_pose"] = {"tolerance_s": tolerance}

    log = write_fleet_log(tmp_path / "slow.mcap", [Episode(2.0)], pose_topic="/base_pose", pose_hz=10)
    assert np.diff(log.times["/base_pose"]).tolist() == [100 * MS] * (len(log.times["/base_pose"]) - 1)
    strict = mapping_with(tmp_path, pose_at_10hz)  # 30 ms: half the steps have no pose that fresh
    assert ingest_file(log.path, strict).episodes["observation.pose"].null_count() == 20
    loose = mapping_with(tmp_path, lambda d: pose_at_10hz(d, 0.12))
    result = ingest_file(log.path, loose)
    assert result.episodes["observation.pose"].null_count() == 0
    steps = np.array(log.episode_steps[0])
    p_times = np.array(log.times["/base_pose"])[latest_at_or_before(log.times["/base_pose"], steps, 120 * MS)]
    pose = np.array(result.episodes["observation.pose"].to_list())
    np.testing.assert_allclose(pose[:, 0], [odom_z(t) * 1e-3 for t in p_times], rtol=1e-5)
    assert validate(result, loose).rejected.height == 0


def test_batch_dir_must_hold_the_files(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "x.mcap", [Episode(0.5)])
    with pytest.raises(ValueError, match="is not inside the landing batch"):
        ingest_files([log.path], mapping, progress=False, batch_dir=tmp_path / "elsewhere")


def test_fingerprint_follows_mapping_and_profile(tmp_path, monkeypatch):
    (tmp_path / "sources").mkdir()
    (tmp_path / "robots").mkdir()
    shutil.copy(ANT, tmp_path / "sources" / "ant_fleet_ros2.yaml")
    profile = tmp_path / "robots" / "ant.yaml"
    shutil.copy(config_dir() / "robots" / "ant.yaml", profile)
    monkeypatch.setenv("ROBOCURATE_RECIPES", str(tmp_path))
    before = load_mapping("ant_fleet_ros2")
    assert before.path == tmp_path / "sources" / "ant_fleet_ros2.yaml" and before.profile.path == profile
    assert load_mapping("ant_fleet_ros2").fingerprint == before.fingerprint
    profile.write_text(profile.read_text().replace("min_height: 0.2 ", "min_height: 0.25 "))
    after = load_mapping("ant_fleet_ros2")
    assert after.profile.posture.min_height == 0.25 and after.fingerprint != before.fingerprint
    mapping_file = tmp_path / "sources" / "ant_fleet_ros2.yaml"
    mapping_file.write_text(mapping_file.read_text().replace("tolerance_s: 0.03", "tolerance_s: 0.04"))
    assert load_mapping("ant_fleet_ros2").fingerprint not in (before.fingerprint, after.fingerprint)


def test_simulated_fleet_clean_episodes_pass_validation(tmp_path, mapping):
    from simulator.fleet import simulate_fleet

    simulate_fleet(4, tmp_path / "batch", seed=3, fault_rate=0.0, episode_steps=60)
    result = ingest_files(sorted((tmp_path / "batch").glob("*.mcap")), mapping, progress=False, batch_dir=tmp_path / "batch")
    assert result.quarantine.height == 0 and result.trims.height == 4
    report = validate(result, mapping)
    assert report.rejected.height == 0 and report.accepted["episode_id"].n_unique() == 4
