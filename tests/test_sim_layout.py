"""The Ant fleet written the way a second site records it (simulator.layout.SiteLayout): other topic names,
types and rates, a folder per robot with run names that repeat, each robot's own joint order, and
streams that start after the first command and stop before the end."""
from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from mcap.reader import make_reader
from test_sim import assert_faults_planted, fleet_fixture, read_mcap, stamp_ns

from foundations.storage import sha256_file
from simulator.fleet import SECOND_SITE, simulate_fleet
from simulator.layout import SiteLayout
from simulator.operators import operator_policy
from simulator.rollout import simulate_episode
from simulator.skills import JOINT_NAMES

STEPS = 60
TYPES = {
    "/ant_b/joints": "sensor_msgs/msg/JointState",
    "/ant_b/base/pose": "geometry_msgs/msg/PoseStamped",
    "/ant_b/base/twist": "geometry_msgs/msg/TwistStamped",
    "/ant_b/motor_cmd": "std_msgs/msg/Float64MultiArray",
    "/ant_b/task": "std_msgs/msg/String",
    "/ant_b/episode": "std_msgs/msg/String",
    "/camera/front/compressed": "sensor_msgs/msg/CompressedImage",  # the fleet's camera, under its own name
}
STATES = ("/ant_b/joints", "/ant_b/base/pose", "/ant_b/base/twist")


site = fleet_fixture(simulate_fleet, 14, seed=2, fault_rate=5 / 14, episode_steps=STEPS, layout="second_site")


def test_nested_folders_with_names_reused_across_robots(site):
    out, truth = site
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mcap"))
    assert sorted(r["file"] for r in truth) == files and len(files) == 14
    assert all(re.fullmatch(r"robot_\d\d/run_\d{5}\.mcap", f) for f in files)
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind
    names = collections.Counter(f.split("/")[1] for f in files)
    assert names["run_00000.mcap"] >= 2  # the same run name in several robot folders
    for r in truth:
        assert r["file"].split("/")[0] == "robot_" + r["robot_id"].split("-")[1]
        assert r["sha256"] == sha256_file(out / r["file"]) and r["layout"] == "second_site"
    # Runs count each robot's episodes in time order.
    for robot in {r["robot_id"] for r in truth}:
        mine = sorted((r for r in truth if r["robot_id"] == robot), key=lambda r: r["start_time_ns"])
        assert [r["file"].split("/")[1] for r in mine] == [f"run_{k:05d}.mcap" for k in range(len(mine))]


def test_site_topics_types_rates_and_metadata(site):
    out, truth = site
    r = next(t for t in truth if t["fault"] is None)
    with open(out / r["file"], "rb") as fh:
        summary = make_reader(fh).get_summary()
    assert {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()} == TYPES
    topics, meta = read_mcap(out / r["file"])
    assert meta == {"site": {"robot_name": r["robot_id"]}}
    for name, period_ms in (("/ant_b/joints", 20), ("/ant_b/base/pose", 40), ("/ant_b/base/twist", 40)):
        stamps = np.array([stamp_ns(m) for _, _, m in topics[name]])
        assert set(np.diff(stamps)) == {period_ms * 1_000_000}
    assert len(topics["/ant_b/motor_cmd"]) == r["n_steps"]
    # The same physics as the fleet's own layout: the base pose is the episode's.
    ep = simulate_episode(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], STEPS)
    _, _, pose = topics["/ant_b/base/pose"][0]
    j = (stamp_ns(pose) - r["start_time_ns"]) // 10_000_000
    p, q = pose.pose.position, pose.pose.orientation
    np.testing.assert_array_equal([p.x, p.y, p.z, q.w, q.x, q.y, q.z], ep.qpos[j, :7])


def test_each_robot_has_its_own_joint_order(site):
    out, truth = site
    orders: dict[str, set] = collections.defaultdict(set)
    for r in (t for t in truth if t["fault"] not in ("truncated", "wrong_topic")):
        topics, _ = read_mcap(out / r["file"])
        names = {tuple(m.name) for _, _, m in topics["/ant_b/joints"]}
        assert names == {tuple(r["joint_order"])} and sorted(r["joint_order"]) == sorted(JOINT_NAMES)
        orders[r["robot_id"]].add(tuple(r["joint_order"]))
    assert all(len(o) == 1 for o in orders.values())  # one order per robot, in every file
    assert len({o for s in orders.values() for o in s}) >= 2 and any(o != {tuple(JOINT_NAMES)} for o in orders.values())
    # Values follow their names.
    r = next(t for t in truth if t["fault"] is None and t["joint_order"] != JOINT_NAMES)
    topics, _ = read_mcap(out / r["file"])
    ep = simulate_episode(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], STEPS)
    _, _, js = topics["/ant_b/joints"][3]
    j = (stamp_ns(js) - r["start_time_ns"]) // 10_000_000
    by_name = dict(zip(js.name, js.position))
    np.testing.assert_array_equal([by_name[n] for n in JOINT_NAMES], ep.qpos[j, 7:15])


def test_streams_start_after_the_first_command_and_one_stops_early(site):
    out, truth = site
    for r in (t for t in truth if t["fault"] is None):
        topics, _ = read_mcap(out / r["file"])
        first_cmd = topics["/ant_b/motor_cmd"][0][0]
        end_ns = r["start_time_ns"] + 5 * r["n_steps"] * 10_000_000
        assert set(r["stream_start_s"]) == set(STATES) and len(r["stream_stop_s"]) == 1
        for name in STATES:
            first_log, _, first = topics[name][0]
            assert first_log > first_cmd  # the first command comes before the first state message
            delay = r["stream_start_s"][name]
            assert 0.02 <= delay <= 0.15 and stamp_ns(first) >= r["start_time_ns"] + delay * 1e9
        (stopped, early), = r["stream_stop_s"].items()
        assert 0.05 <= early <= 0.3
        assert stamp_ns(topics[stopped][-1][2]) <= end_ns - early * 1e9
        others = [n for n in STATES if n != stopped]
        assert all(stamp_ns(topics[n][-1][2]) > end_ns - 0.05e9 for n in others)


def test_faults_are_planted_on_the_site_topics(site):
    # /ant_b/joints runs at 50 Hz: 0.12-0.3 s of NaN is 6-15 messages.
    assert_faults_planted(*site, joints="/ant_b/joints", states=STATES, cmd="/ant_b/motor_cmd", nan_rows=(6, 15))


def test_layouts_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'site_c'"):
        simulate_fleet(1, tmp_path, layout="site_c")
    with pytest.raises(ValueError, match="does not divide"):
        simulate_fleet(1, tmp_path, episode_steps=10, layout=SiteLayout(rates_hz={"/joint_states": 30}))
    with pytest.raises(ValueError, match="renames /odometry"):
        simulate_fleet(1, tmp_path, episode_steps=10, layout=SiteLayout(topics={"/odometry": "/odom2"}))
    with pytest.raises(ValueError, match="files must be"):
        SiteLayout(files="by_day")
    with pytest.raises(ValueError, match="stream_start_s"):
        SiteLayout(stream_start_s=(0.0, 0.1))
    assert SECOND_SITE.files == "per_robot" and SECOND_SITE.shuffle_joints
