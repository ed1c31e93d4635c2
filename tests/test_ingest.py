"""Ingestion of real ROS 2 MCAP files (written by tests/mcap_factory.py) into the canonical table."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from mcap.reader import make_reader

from mcap_factory import (
    MS, T0, Episode, action_values, joint_values, latest_at_or_before, odom_z, strip_summary, write_fleet_log,
)
from foundations.ingest import MappingError, ingest_file, ingest_files, load_mapping
from foundations.catalog import config_dir
from foundations.schema import POLARS_SCHEMA, QUARANTINE_SCHEMA, episode_id
from foundations.storage import sha256_file

MAPPING_PATH = config_dir() / "sources" / "ant_fleet_ros2.yaml"
EXPECTED_SCHEMA = dict(POLARS_SCHEMA) | {"observation.pose": pl.List(pl.Float32), "observation.images.front": pl.Binary}


@pytest.fixture(scope="module")
def mapping():
    return load_mapping("ant_fleet_ros2")


def only(result, check: str) -> dict:
    rows = result.quarantine.filter(pl.col("check") == check).to_dicts()
    assert len(rows) == 1, result.quarantine.to_dicts()
    return rows[0]


def test_real_mapping_loads(mapping):
    assert mapping.name == "ant_fleet_ros2"
    assert mapping.control.topic == "/cmd_joint" and mapping.control.tolerance_s == pytest.approx(0.03)
    assert mapping.feature_width("observation.state") == 27  # Ant-v5: qpos[2:] (13) + qvel (14)
    assert mapping.feature_width("action") == 8
    assert mapping.feature_width("observation.pose") == 3
    assert mapping.extra_features == ["observation.pose", "observation.images.front"]
    assert mapping.image_shapes == {"observation.images.front": (64, 64, 3)}
    assert mapping.required_topics == ["/cmd_joint", "/odom", "/joint_states", "/instruction"]
    assert mapping.optional_topics == ["/camera/front/compressed"]  # a robot without a camera is still ingested
    assert mapping.episode_markers.terminal == "fall_detected"
    assert mapping.reward is None
    assert mapping.robot == "ant" and mapping.profile.name == "ant"
    assert mapping.profile.skills["turn right"].target == -3.0
    assert mapping.action_bounds == (-1.0, 1.0) == mapping.profile.action_bounds
    assert mapping.clock == "log_time" and set(mapping.streams) == {"/camera/front/compressed"}
    assert mapping.feature_names("observation.state")[5] == "/joint_states.position[hip_1]"
    expected = hashlib.sha256(MAPPING_PATH.read_bytes() + b"\0" + (config_dir() / "robots" / "ant.yaml").read_bytes())
    assert load_mapping(MAPPING_PATH).fingerprint == mapping.fingerprint == expected.hexdigest()


def _edited(tmp_path: Path, edit) -> Path:
    doc = yaml.safe_load(MAPPING_PATH.read_text())
    edit(doc)
    path = tmp_path / "ant_fleet_ros2.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "edit, key, hint",
    [
        (lambda d: d.update(featurs=d["features"]), "featurs", "unknown key"),
        (lambda d: d["control"].pop("topic"), "control.topic", "required"),
        (lambda d: d["features"]["action"][0].update(size=-1), "features.action.0.size", "greater than 0"),
        (lambda d: d["features"]["observation.state"][2].update(fields="x"), "features.observation.state.2.fields", "unknown key"),
        (lambda d: d["features"]["observation.pose"][1].update(transform="roll"), "features.observation.pose.1.transform", "yaw_from_quaternion"),
        (lambda d: d["features"]["observation.state"][0].update(topic="odom"), "features.observation.state.0.topic", "start with '/'"),
        (lambda d: d["features"].pop("action"), "features", "feature 'action' is required"),
        # robot profile: required, must exist, and what it reads must be produced here
        (lambda d: d.pop("robot"), "robot", "name the robot profile of this fleet, a file in datasets/robots/ (known: ant"),
        (lambda d: d.update(robot="hexapod"), "robot", "robot profile 'hexapod' does not load: no robot 'hexapod'"),
        (lambda d: d["features"].pop("observation.pose"), "features",
         "reads observation.pose (base_pose) but this mapping does not produce it"),
        (lambda d: d["features"]["observation.state"].pop(), "features.observation.state",
         "reads dimensions 19..26 of it (joint_velocity) but this mapping makes it 19 wide"),
        # keys that moved to the robot profile
        (lambda d: d.update(bounds={"action": [-1, 1]}), "bounds", "move it to the robot profile datasets/robots/ant.yaml as action_bounds"),
        (lambda d: d.update(skills={"walk": {"measure": "forward_m", "target": 1}}), "skills",
         "move it to the robot profile datasets/robots/ant.yaml as skills"),
        # names, index paths, clocks, streams, formats
        (lambda d: d["features"]["observation.state"][2].update(names=["hip_1", "hip_1"]), "features.observation.state.2.names",
         "names repeat: hip_1"),
        (lambda d: d["features"]["observation.state"][2].update(names=[]), "features.observation.state.2.names", "non-empty"),
        (lambda d: d["features"]["observation.state"][2].update(size=8), "features.observation.state.2",
         "at most one of size, components, transform, names"),
        (lambda d: d["features"]["action"][0].update(name_field="name"), "features.action.0", "name_field only goes with names"),
        (lambda d: d["features"]["observation.state"][0].update(field="pose.covariance[-1]"), "features.observation.state.0.field",
         "optionally indexing arrays like pose.covariance[0]"),
        (lambda d: d["features"]["observation.state"][0].update(field="data[x]"), "features.observation.state.0.field", "dotted field path"),
        (lambda d: d.update(clock="wall"), "clock", "'log_time' or 'header'"),
        (lambda d: d.update(streams={"/imu": {"tolerance_s": 0.1}}), "streams./imu", "not a topic this mapping reads"),
        (lambda d: d.update(streams={"/odom": {"tolerance_s": -1}}), "streams./odom.tolerance_s", "greater than 0"),
        (lambda d: d.update(streams={"/instruction": {"tolerance_s": 1}}), "streams./instruction.tolerance_s", "not aligned"),
        (lambda d: d.update(format="rosbag"), "format", "unknown format 'rosbag'; known: mcap"),
        (lambda d: d["control"].pop("rate_hz"), "control.rate_hz", "required"),
        (lambda d: d.update(name="other_fleet"), "name", "is 'other_fleet' but the file is ant_fleet_ros2.yaml"),
    ],
)
def test_malformed_mapping_names_the_key(tmp_path, edit, key, hint):
    with pytest.raises(MappingError) as err:
        load_mapping(_edited(tmp_path, edit))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'ant_fleet_ros2.yaml'}: key '{key}'"), message
    assert hint in message, message


def test_unknown_mapping_name_lists_available():
    with pytest.raises(MappingError, match="ant_fleet_ros2"):
        load_mapping("no_such_fleet")


def test_clean_file_rows_alignment_and_flags(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "clean.mcap", [Episode(duration_s=2.0)], markers=False)
    result = ingest_file(log.path, mapping)
    ep = result.episodes
    assert result.quarantine.height == 0
    assert ep.schema == pl.Schema(EXPECTED_SCHEMA)
    steps = np.array(log.episode_steps[0])
    assert ep.height == len(steps) == 40
    sha = sha256_file(log.path)
    assert ep["episode_id"].unique().to_list() == [episode_id(sha, 0)]
    assert ep["source_sha256"].unique().to_list() == [sha]
    assert ep["source_file"].unique().to_list() == ["clean.mcap"]
    assert ep["robot_id"].unique().to_list() == ["ant-03"]
    assert ep["step"].to_list() == list(range(40))
    np.testing.assert_allclose(ep["timestamp"].to_numpy(), (steps - steps[0]) / 1e9)
    assert ep["is_first"].to_list() == [True] + [False] * 39
    assert ep["is_last"].to_list() == [False] * 39 + [True]
    assert not ep["is_terminal"].any()
    assert ep["reward"].null_count() == 40
    assert set(ep["language_instruction"]) == {"walk forward"}

    # Alignment: every feature equals the latest message at or before the step (independent numpy lookup).
    tol = int(mapping.control.tolerance_s * 1e9)
    j_idx = latest_at_or_before(log.times["/joint_states"], steps, tol)
    o_idx = latest_at_or_before(log.times["/odom"], steps, tol)
    assert (j_idx >= 0).all() and (o_idx >= 0).all()
    j_times = np.array(log.times["/joint_states"])[j_idx]
    o_times = np.array(log.times["/odom"])[o_idx]
    assert (steps - j_times == 7 * MS).all()  # 100 Hz with a 3 ms phase: 7 ms older, not the nearest
    state = np.array(ep["observation.state"].to_list())
    assert state.shape == (40, 27)
    np.testing.assert_allclose(state[:, 0], [odom_z(t) for t in o_times], rtol=1e-6)
    np.testing.assert_allclose(state[:, 5:13], [joint_values(t) for t in j_times], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(state[:, 19:27], [[-v for v in joint_values(t)] for t in j_times], rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(state[:, 13:19], [[1, 2, 3, 4, 5, 6]] * 40)
    np.testing.assert_allclose(np.array(ep["action"].to_list()), [action_values(t) for t in steps], rtol=1e-6, atol=1e-7)
    pose = np.array(ep["observation.pose"].to_list())
    np.testing.assert_allclose(pose[:, 0], [odom_z(t) * 1e-3 for t in o_times], rtol=1e-5)
    np.testing.assert_allclose(pose[:, 2], [(t - T0) / 1e9 * 0.1 for t in o_times], atol=1e-6)  # yaw


def test_markers_split_episodes_and_fall_sets_terminal(tmp_path, mapping):
    log = write_fleet_log(
        tmp_path / "two.mcap",
        [Episode(2.0, "walk forward"), Episode(1.0, "turn left", fall_at_s=0.6)],
    )
    result = ingest_file(log.path, mapping)
    assert result.quarantine.height == 0
    sha = sha256_file(log.path)
    per = result.episodes.group_by("episode_id", maintain_order=True).agg(
        pl.len(), pl.col("language_instruction").unique(), pl.col("is_terminal").sum().alias("terminal_rows"),
        pl.col("timestamp").first(), pl.col("is_last").arg_max(),
    ).sort("episode_id")
    assert per["episode_id"].to_list() == [episode_id(sha, 0), episode_id(sha, 1)]
    assert per["len"].to_list() == [40, 20]
    assert per["language_instruction"].to_list() == [["walk forward"], ["turn left"]]
    assert per["terminal_rows"].to_list() == [0, 1]
    assert per["is_last"].to_list() == [39, 19]
    assert per["timestamp"].to_list() == [0.0, 0.0]
    fall = result.episodes.filter(pl.col("episode_id") == episode_id(sha, 1))
    assert fall["is_terminal"].to_list() == [False] * 19 + [True]


def test_truncated_file_is_quarantined(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "cut.mcap", [Episode(1.0)])
    data = log.path.read_bytes()
    log.path.write_bytes(data[: len(data) // 2])
    result = ingest_file(log.path, mapping)
    assert result.episodes.height == 0 and result.episodes.schema == pl.Schema(EXPECTED_SCHEMA)
    row = only(result, "unreadable_mcap")
    assert row["episode_id"] is None and row["stage"] == "ingest" and row["source_file"] == "cut.mcap"
    assert row["reason"] == (
        f"unreadable MCAP (truncated or corrupt): the file ends after {len(data) // 2} bytes without the MCAP footer "
        "(cut short while writing); re-export the log"
    )
    assert result.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)


def test_not_an_mcap_file_is_quarantined(tmp_path, mapping):
    path = tmp_path / "notes.mcap"
    path.write_text("operator notes, not a log\n")
    row = only(ingest_file(path, mapping), "unreadable_mcap")
    assert "not an MCAP file" in row["reason"]


def test_missing_topic_names_topic_and_lists_found(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "renamed.mcap", rename={"/joint_states": "/joint_state"})
    result = ingest_file(log.path, mapping)
    assert result.episodes.height == 0
    row = only(result, "missing_topic")
    assert row["reason"] == (
        "required topic /joint_states not in file (found: /camera/front/compressed, /cmd_joint, /events, /instruction, /joint_state, /odom); "
        "fix the recording or map the topic in datasets/sources/ant_fleet_ros2.yaml"
    )


def test_gap_in_joint_states_gives_nulls_not_fills(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "gap.mcap", [Episode(2.0)], joint_gap=(0.5, 0.8))
    result = ingest_file(log.path, mapping)
    assert result.quarantine.height == 0  # validation decides; ingestion keeps the nulls
    ep = result.episodes
    steps = np.array(log.episode_steps[0])
    missing = latest_at_or_before(log.times["/joint_states"], steps, int(mapping.control.tolerance_s * 1e9)) < 0
    assert missing.sum() == 6  # steps at 0.55 .. 0.80 s: the newest joint message (0.493 s) is older than 30 ms
    assert ep["observation.state"].is_null().to_numpy().tolist() == missing.tolist()
    assert ep["observation.pose"].null_count() == 0 and ep["action"].null_count() == 0


def test_nan_passes_through_as_nan(tmp_path, mapping):
    # The joint message at 0.543 s carries NaN in position[2] (and so velocity[2] = -NaN);
    # it is the latest joint message at the step at 0.55 s (step 11) and at no other.
    log = write_fleet_log(tmp_path / "nan.mcap", [Episode(1.0)], nan_joint_at=0.54)
    result = ingest_file(log.path, mapping)
    assert result.quarantine.height == 0  # finite checks belong to validation
    state = result.episodes["observation.state"]
    assert state.null_count() == 0
    nan = np.isnan(np.array(state.to_list()))
    assert np.argwhere(nan).tolist() == [[11, 5 + 2], [11, 19 + 2]]


def test_episode_start_without_end_is_quarantined(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "open.mcap", [Episode(1.0), Episode(1.0, "turn right", end_marker=False)])
    result = ingest_file(log.path, mapping)
    sha = sha256_file(log.path)
    assert result.episodes["episode_id"].unique().to_list() == [episode_id(sha, 0)]
    row = only(result, "unterminated_episode")
    assert row["episode_id"] == episode_id(sha, 1)
    assert "episode_start at 1.50 s" in row["reason"] and "no episode_end" in row["reason"]


def test_log_starting_mid_episode_quarantines_the_fragment(tmp_path, mapping):
    events = [(0.95, "episode_end"), (1.5, "episode_start"), (2.45, "fall_detected"), (2.45, "episode_end")]
    log = write_fleet_log(tmp_path / "mid.mcap", [Episode(1.0), Episode(1.0, "turn left")], markers=False, events=events)
    result = ingest_file(log.path, mapping)
    sha = sha256_file(log.path)
    row = only(result, "unmatched_episode_end")
    assert row["episode_id"] == episode_id(sha, 0) and "started mid-episode" in row["reason"]
    ep = result.episodes
    assert ep["episode_id"].unique().to_list() == [episode_id(sha, 1)] and ep.height == 20
    assert ep["is_terminal"].to_list() == [False] * 19 + [True]  # fall logged at the same instant as the end


def test_without_markers_topic_one_episode_per_file(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "plain.mcap", [Episode(1.0), Episode(0.5, "turn left")], drop=("/events",))
    result = ingest_file(log.path, mapping)
    assert result.quarantine.height == 0
    ep = result.episodes
    assert ep["episode_id"].n_unique() == 1 and ep.height == 30
    # The instruction follows the latest message: it changes where the operator was told the new task.
    assert ep["language_instruction"].to_list() == ["walk forward"] * 20 + ["turn left"] * 10


def test_episode_without_instruction_is_quarantined(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "mute.mcap", [Episode(1.0, instruction=None), Episode(1.0, "turn left")])
    result = ingest_file(log.path, mapping)
    sha = sha256_file(log.path)
    assert result.episodes["episode_id"].unique().to_list() == [episode_id(sha, 1)]
    assert set(result.episodes["language_instruction"]) == {"turn left"}
    row = only(result, "no_instruction")
    assert row["episode_id"] == episode_id(sha, 0) and "/instruction" in row["reason"]


def test_wrong_array_size_is_quarantined(tmp_path):
    def by_size(d):
        d["features"]["observation.state"][2] = {"topic": "/joint_states", "field": "position", "size": 8}

    log = write_fleet_log(tmp_path / "seven.mcap", [Episode(0.5)], joint_size=7)
    result = ingest_file(log.path, load_mapping(_edited(tmp_path, by_size)))
    assert result.episodes.height == 0
    reasons = result.quarantine["reason"].to_list()
    assert any("field position of /joint_states has 7 values" in r and "expected 8" in r for r in reasons)


def test_missing_joint_name_quarantines_the_file(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "seven.mcap", [Episode(0.5)], joint_size=7)
    result = ingest_file(log.path, mapping)
    assert result.episodes.height == 0 and result.trims.height == 0
    row = only(result, "missing_name")
    assert row["episode_id"] is None and row["source_file"] == "seven.mcap"
    assert row["reason"] == (
        "ankle_4 not in name of /joint_states (it has: hip_1, ankle_1, hip_2, ankle_2, hip_3, ankle_3, hip_4); "
        "fix the recording or the names mapped from /joint_states in datasets/sources/ant_fleet_ros2.yaml")


def test_mapped_field_absent_from_messages(tmp_path):
    def edit(d):
        d["features"]["observation.state"][0]["field"] = "pose.pose.postion.z"

    bad = load_mapping(_edited(tmp_path, edit))
    log = write_fleet_log(tmp_path / "ok.mcap", [Episode(0.5)])
    row = only(ingest_file(log.path, bad), "field_mismatch")
    assert "pose.pose.postion.z not in /odom messages (type nav_msgs/msg/Odometry)" in row["reason"]


def test_corrupt_chunk_is_salvaged_around(tmp_path, mapping):
    episodes = [Episode(1.0, "walk forward"), Episode(1.0, "turn left"), Episode(1.0, "turn right")]
    log = write_fleet_log(tmp_path / "bitrot.mcap", episodes, chunk_size=16 * 1024)
    with open(log.path, "rb") as fh:
        chunks = sorted(make_reader(fh).get_summary().chunk_indexes, key=lambda c: c.message_start_time)
    t_mid = log.episode_steps[1][10]
    victim = next(c for c in chunks if c.message_start_time <= t_mid <= c.message_end_time)
    data = bytearray(log.path.read_bytes())
    end = victim.chunk_start_offset + victim.chunk_length
    data[end - 64 : end - 32] = bytes(32)  # zero a stretch of the compressed records
    log.path.write_bytes(bytes(data))

    result = ingest_file(log.path, mapping)
    sha = sha256_file(log.path)
    file_row = result.quarantine.filter(pl.col("episode_id").is_null())
    assert file_row["check"].to_list() == ["lost_chunks"]
    lost = result.quarantine.filter(pl.col("check") == "lost_chunks", pl.col("episode_id").is_not_null())
    assert episode_id(sha, 1) in lost["episode_id"].to_list()
    assert "re-export the log" in lost["reason"][0]
    kept = set(result.episodes["episode_id"])
    assert kept and episode_id(sha, 1) not in kept and kept <= {episode_id(sha, 0), episode_id(sha, 2)}


def test_file_without_summary_reads_linearly(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "indexed.mcap", [Episode(1.0)])
    strip_summary(log.path, tmp_path / "streamed.mcap")
    with open(tmp_path / "streamed.mcap", "rb") as fh:
        assert make_reader(fh).get_summary() is None
    streamed = ingest_file(tmp_path / "streamed.mcap", mapping, sha256="f" * 64)
    indexed = ingest_file(log.path, mapping, sha256="f" * 64)
    assert streamed.quarantine.height == 0 and streamed.episodes.height == 20
    assert streamed.episodes.drop("source_file").equals(indexed.episodes.drop("source_file"))


def test_robot_id_falls_back_to_file_stem(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "ant-07_run.mcap", [Episode(0.5)], robot_id=None)
    assert ingest_file(log.path, mapping).episodes["robot_id"].unique().to_list() == ["ant-07_run"]


def test_ingest_files_concatenates_and_uses_given_hashes(tmp_path, mapping):
    a = write_fleet_log(tmp_path / "a.mcap", [Episode(0.5)]).path
    b = write_fleet_log(tmp_path / "b.mcap", [Episode(0.5), Episode(0.5, "turn left")]).path
    bad = tmp_path / "c.mcap"
    bad.write_bytes(a.read_bytes()[:100])
    result = ingest_files([a, b, bad], mapping, hashes={str(a): "a" * 64}, progress=False)
    assert result.files == 3 and result.messages > 0
    assert result.episodes.schema == pl.Schema(EXPECTED_SCHEMA)
    ids = result.episodes["episode_id"].unique().sort().to_list()
    assert ids == sorted([episode_id("a" * 64, 0), episode_id(sha256_file(b), 0), episode_id(sha256_file(b), 1)])
    assert result.quarantine["source_file"].to_list() == ["c.mcap"]
    assert result.episodes.height == 10 + 10 + 10
    assert math.isclose(result.episodes.filter(pl.col("is_last"))["timestamp"].max(), 0.45)
    parallel = ingest_files([a, b, bad], mapping, hashes={str(a): "a" * 64}, progress=False, workers=2)
    assert parallel.episodes.equals(result.episodes) and parallel.quarantine.equals(result.quarantine)


def test_documented_format_is_the_real_one(tmp_path):
    """datasets/sources/README.md: its complete example loads, and it documents every key the models accept."""
    from foundations.ingest.mapping import FieldSpec, MarkerSpec, RobotIdSpec, SourceMapping, StreamSpec

    readme = (config_dir() / "sources" / "README.md").read_text()
    example = readme.split("## A complete example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "site_b.yaml").write_text(example)
    site = load_mapping(tmp_path / "site_b.yaml")
    assert site.clock == "header" and site.tolerance_for("/target/pose") == 0.12 and site.clock_for("/robot/cmd") == ("log_time", False)
    assert site.feature_width("observation.state") == 27 and site.robot_id.folder == 0
    for model in (SourceMapping, FieldSpec, MarkerSpec, RobotIdSpec, StreamSpec):
        keys = [k for k, f in model.model_fields.items() if not f.exclude]
        assert not [k for k in keys if f"`{k}`" not in readme and f"{k}:" not in readme], model.__name__
