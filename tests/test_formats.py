"""One mapping, every input format: the same simulated episodes written as MCAP, rosbag2 (sqlite3 and
mcap storage), ROS 1 bag, robomimic HDF5 and a LeRobot v3 folder ingest to the same canonical rows, with
mappings derived from datasets/sources/ant_fleet_ros2.yaml that differ only in `format:` and topic names
(LeRobot: whole features as columns). Damaged logs are quarantined with a reason; robomimic masks become
episode labels; a bag folder is one landed log, hashed whole and accounted for once."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from format_factory import lerobot_from_rows, robomimic_from_rows, ros1_from_rosbag2, rosbag2_from_mcap, variant

from foundations import landing
from foundations.ingest import ingest_files, load_mapping
from foundations.ingest.formats import find_logs
from quality.conservation import account_for_files, landed_files

BASE = "ant_fleet_ros2"
HDF5_TOPICS = {"/cmd_joint": "/actions", "/odom": "/obs/odom", "/joint_states": "/obs/joint_states",
               "/instruction": "/@instruction", "/events": "/dones"}
SAME = ["step", "observation.state", "action", "is_first", "is_last", "is_terminal", "language_instruction", "reward"]
MASKS = {"better": [0, 2], "worse": [1], "train": [0, 1]}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict:
    from simulator.embodiments import get_embodiment

    root = tmp_path_factory.mktemp("formats")
    get_embodiment("ant").simulate_fleet(3, root / "mcap", seed=3, fault_rate=0.0, episode_steps=30)
    mcaps = sorted((root / "mcap").glob("*.mcap"))
    base = load_mapping(BASE)
    reference = ingest_files(mcaps, base, progress=False)
    maps = root / "maps"
    made = {}
    for storage in ("sqlite3", "mcap"):
        folder = root / f"rosbag2_{storage}"
        folder.mkdir()
        for m in mcaps:  # the sqlite3 bags also record a camera the mapping does not read
            rosbag2_from_mcap(m, folder / m.stem, storage, camera="/camera/image_raw" if storage == "sqlite3" else None)
        made[f"rosbag2_{storage}"] = (folder, load_mapping(variant(BASE, maps, f"bags_{storage}", "rosbag2", {})))
    (root / "ros1").mkdir()
    for m in mcaps:
        ros1_from_rosbag2(root / "rosbag2_sqlite3" / m.stem, root / "ros1" / f"{m.stem}.bag")
    made["ros1"] = (root / "ros1", load_mapping(variant(BASE, maps, "bags_ros1", "ros1", {})))
    hdf5 = load_mapping(variant(BASE, maps, "demos", "hdf5", HDF5_TOPICS))
    (root / "hdf5").mkdir()
    robomimic_from_rows(reference.episodes, base.without_images(), HDF5_TOPICS, root / "hdf5" / "demos.hdf5", masks=MASKS)
    made["hdf5"] = (root / "hdf5", hdf5)
    features = list(base.without_images().features)
    lerobot_features = {f: [{"topic": f"/{f}", "field": "data", "size": base.feature_width(f)}] for f in features}
    lerobot = load_mapping(variant(BASE, maps, "lerobot_set", "lerobot",
                                   {"/cmd_joint": "/action", "/instruction": "/task", "/events": "/next.done"},
                                   features=lerobot_features))
    lerobot_from_rows(reference.episodes, features, int(base.control.rate_hz), root / "lerobot" / "ant_set")
    made["lerobot"] = (root / "lerobot", lerobot)
    return {"root": root, "mcaps": mcaps, "base": base, "reference": reference, "made": made}


def _ingest(folder: Path, mapping) -> tuple:
    paths = find_logs(folder, mapping.file_glob, mapping.format)
    return paths, ingest_files(paths, mapping, progress=False, batch_dir=folder)


@pytest.mark.parametrize("fmt", ["rosbag2_sqlite3", "rosbag2_mcap", "ros1", "hdf5", "lerobot"])
def test_every_format_gives_the_same_canonical_rows(logs, fmt):
    folder, mapping = logs["made"][fmt]
    paths, result = _ingest(folder, mapping)
    assert result.quarantine.is_empty(), result.quarantine.select("check", "reason").rows()
    ref = logs["reference"].episodes
    assert ref["episode_id"].n_unique() == 3 and ref["is_terminal"].dtype == pl.Boolean
    got = result.episodes
    key = ["source_file", "step"] if fmt in ("rosbag2_sqlite3", "rosbag2_mcap", "ros1") else ["episode_id", "step"]
    if fmt.startswith("rosbag2"):  # a bag is a folder named like the MCAP file it was made from
        got = got.with_columns(pl.col("source_file") + ".mcap")
    elif fmt == "ros1":
        got = got.with_columns(pl.col("source_file").str.replace(r"\.bag$", ".mcap"))
    ref, got = ref.sort(key), got.sort(key)
    assert got.height == ref.height
    assert got.select(SAME).equals(ref.select(SAME))
    # Log times travel with the messages; HDF5 and LeRobot have none (rows at the control rate, float32
    # seconds), and their yaw is computed from quaternions stored at float32.
    tol = 0.0 if fmt.startswith(("rosbag2", "ros1")) else 1e-3
    assert np.abs(got["timestamp"].to_numpy() - ref["timestamp"].to_numpy()).max() <= tol
    pose = np.stack(got["observation.pose"].to_list()) - np.stack(ref["observation.pose"].to_list())
    assert np.abs(pose).max() <= (0.0 if tol == 0.0 else 1e-5)
    # Lineage is the format's own: the bag folder or file, its content hash.
    assert set(got["source"]) == {mapping.name}
    assert set(got["source_sha256"]).isdisjoint(set(ref["source_sha256"]))
    if fmt.startswith("rosbag2"):  # MCAP metadata records travel as rosbag2 custom data
        assert got["robot_id"].to_list() == ref["robot_id"].to_list()


def test_robomimic_masks_become_episode_labels(logs):
    folder, mapping = logs["made"]["hdf5"]
    _, result = _ingest(folder, mapping)
    ids = sorted(result.episodes["episode_id"].unique())
    got = {(r["episode_name"], r["label"]) for r in result.labels.iter_rows(named=True)}
    assert got == {(f"demo_{k}", label) for label, demos in MASKS.items() for k in demos}
    assert set(result.labels["episode_id"]) <= set(ids)
    assert result.labels.filter(pl.col("episode_name") == "demo_1")["episode_id"].unique().to_list() == [ids[1]]


def test_d4rl_layout_splits_episodes_at_terminals_and_timeouts(logs, tmp_path):
    base, ref = logs["base"], logs["reference"].episodes.sort("episode_id", "step")
    path = tmp_path / "d4rl.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = np.stack(ref["observation.state"].to_list())
        f["actions"] = np.stack(ref["action"].to_list())
        f["rewards"] = np.zeros(ref.height)
        f["terminals"] = ref["is_terminal"].to_numpy()
        f["timeouts"] = (ref["is_last"] & ~ref["is_terminal"]).to_numpy()
        f["infos/pose"] = np.stack(ref["observation.pose"].to_list())
        f["infos/instruction"] = np.array(ref["language_instruction"].to_list(), dtype="S")
    features = {"action": [{"topic": "/actions", "field": "data", "size": 8}],
                "observation.state": [{"topic": "/observations", "field": "data", "size": base.feature_width("observation.state")}],
                "observation.pose": [{"topic": "/infos/pose", "field": "data", "size": 3}]}
    mapping = load_mapping(variant(BASE, tmp_path / "maps", "d4rl", "hdf5",
                                   {"/cmd_joint": "/actions", "/instruction": "/infos/instruction", "/events": "/terminals"},
                                   features=features))
    result = ingest_files([path], mapping, progress=False)
    assert result.quarantine.is_empty(), result.quarantine.rows()
    got = result.episodes.sort("episode_id", "step")
    assert got.select(SAME + ["observation.pose"]).equals(ref.select(SAME + ["observation.pose"]))


def test_a_camera_mapped_as_numbers_is_a_reasoned_quarantine_not_a_crash(logs, tmp_path):
    folder, _ = logs["made"]["rosbag2_sqlite3"]
    features = dict(logs["base"].model_dump()["features"])
    features["observation.camera"] = [{"topic": "/camera/image_raw", "field": "data", "size": 8}]
    features = {k: [{kk: vv for kk, vv in p.items() if vv is not None} for p in v] for k, v in features.items()}
    mapping = load_mapping(variant(BASE, tmp_path, "bags_camera", "rosbag2", {}, features=features))
    paths, result = _ingest(folder, mapping)
    assert result.episodes.is_empty()
    assert set(result.quarantine["check"]) == {"field_size"}
    assert "36 values" in result.quarantine["reason"][0] and "/camera/image_raw" in result.quarantine["reason"][0]


def test_damaged_logs_are_quarantined_with_a_reason(logs, tmp_path):
    made = logs["made"]
    bag_folder, bag_mapping = made["rosbag2_sqlite3"]
    bag = tmp_path / "bag"
    shutil.copytree(next(p for p in bag_folder.iterdir() if p.is_dir()), bag)
    db = next(bag.glob("*.db3"))
    db.write_bytes(b"not a database" * 100)
    ros1 = tmp_path / "cut.bag"
    source = next(made["ros1"][0].glob("*.bag")).read_bytes()
    ros1.write_bytes(source[: len(source) // 3])
    hdf5 = tmp_path / "broken.hdf5"
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    info = tmp_path / "lerobot" / "meta" / "info.json"
    info.parent.mkdir(parents=True)
    info.write_text("{ not json")
    for path, mapping, check in ((bag, bag_mapping, "unreadable_rosbag2"), (ros1, made["ros1"][1], "unreadable_ros1"),
                                 (hdf5, made["hdf5"][1], "unreadable_hdf5"),
                                 (info.parents[1], made["lerobot"][1], "unreadable_lerobot")):
        result = ingest_files([path], mapping, progress=False)
        assert result.episodes.is_empty()
        assert result.quarantine["check"].to_list() == [check], (path, result.quarantine.rows())
        assert result.quarantine["reason"][0] and result.quarantine["episode_id"][0] is None
    # A mapped field the HDF5 file does not have: a field mismatch naming it, not a crash.
    renamed = tmp_path / "renamed.hdf5"
    shutil.copy(made["hdf5"][0] / "demos.hdf5", renamed)
    with h5py.File(renamed, "a") as f:
        f.move("data/demo_0/obs/odom/pose/pose/position/z", "data/demo_0/obs/odom/pose/pose/position/height")
    result = ingest_files([renamed], made["hdf5"][1], progress=False)
    assert result.quarantine["check"].to_list() == ["field_mismatch"]
    assert "pose.pose.position.z" in result.quarantine["reason"][0]


def test_a_bag_folder_is_one_log_accounted_for_once(logs, data_root, monkeypatch, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(Path(__file__).resolve().parents[1] / "datasets", catalog)
    folder, mapping = logs["made"]["rosbag2_mcap"]
    shutil.copy(mapping.path, catalog / "sources")
    monkeypatch.setenv("ROBOCURATE_RECIPES", str(catalog))
    upload = tmp_path / "upload"
    bags = sorted(p for p in folder.iterdir() if p.is_dir())
    for k, bag in enumerate(bags):  # one folder per robot; bag folders reuse names across robots
        shutil.copytree(bag, upload / f"robot_{k}" / "run_0")
    key = landing.land([upload], mapping.name)
    scan = landing.scan_batch(key, mapping.file_glob, None, mapping.format)
    assert scan["file"].to_list() == [f"robot_{k}/run_0" for k in range(len(bags))]
    assert scan["status"].unique().to_list() == ["new"]
    landed = landed_files(landing.batch_dir(key), mapping.file_glob, mapping.format)
    assert landed.select("file", "sha256").equals(scan.select("file", "sha256"))
    paths = landing.batch_files(key, mapping.file_glob, mapping.format)
    result = ingest_files(paths, mapping, hashes=dict(zip(map(str, paths), scan["sha256"])), progress=False,
                          batch_dir=landing.batch_dir(key))
    assert sorted(result.episodes["source_file"].unique()) == scan["file"].to_list()
    outcomes, problems = account_for_files(landed, scan, result.episodes, result.episodes, result.quarantine)
    assert problems.is_empty(), problems.rows()
    assert outcomes["outcome"].to_list() == ["episodes"] * len(bags)
    # Any file of the bag changing changes the log's identity.
    db = next((landing.batch_dir(key) / "robot_0" / "run_0").glob("*.mcap"))
    db.write_bytes(db.read_bytes() + b"\0")
    assert landed_files(landing.batch_dir(key), mapping.file_glob, mapping.format)["sha256"][0] != scan["sha256"][0]


def test_ingest_asset_keeps_robomimic_labels_and_status_shows_them(logs, instance, monkeypatch, tmp_path):
    import dagster as dg

    from foundations import storage
    from pipelines.assets.ingest import episodes, raw_log_files
    from pipelines.resources import DataRoot
    from pipelines.status import file_status

    catalog = tmp_path / "catalog"
    shutil.copytree(Path(__file__).resolve().parents[1] / "datasets", catalog)
    folder, mapping = logs["made"]["hdf5"]
    shutil.copy(mapping.path, catalog / "sources")
    monkeypatch.setenv("ROBOCURATE_RECIPES", str(catalog))
    key = landing.land([folder / "demos.hdf5"], mapping.name)
    instance.add_dynamic_partitions("landing_batch", [key])
    dg.materialize([raw_log_files, episodes], instance=instance, partition_key=key, resources={"data_root": DataRoot()})
    labels = storage.read_partition("ingest_labels", key)
    assert sorted(labels["label"]) == sorted(label for label, demos in MASKS.items() for _ in demos)
    status = file_status()
    assert status["file"].to_list() == ["demos.hdf5"]
    shown = {ep["episode_id"]: ep["labels"] for ep in status["episodes"][0]}
    ids = sorted(shown)
    assert [shown[i] for i in ids] == [["better", "train"], ["train", "worse"], ["better"]]
