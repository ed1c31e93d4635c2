"""The simulated fleet: real MuJoCo physics, real ROS 2 MCAP files read back with mcap-ros2-support."""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from simulator.cpg import load_gaits
from simulator.faults import FAULT_KINDS
from simulator.fleet import read_ground_truth, simulate_fleet
from simulator.operators import operator_policy
from simulator.rollout import rollout, simulate_episode
from simulator.skills import (
    JOINT_NAMES,
    JOINT_OF_ACTUATOR,
    SKILLS,
    joint_of_actuator,
    make_env,
    observe,
    progress,
    trajectory_progress,
)

REPO = Path(__file__).resolve().parents[1]
FLEET_STEPS = 60  # 3 s episodes keep the fleet test fast; faults need >= 2 s


def read_mcap(path: Path) -> tuple[dict[str, list], dict[str, dict]]:
    """Every decoded message by topic as (log_time, publish_time, msg), plus metadata records."""
    by_topic: dict[str, list] = collections.defaultdict(list)
    with open(path, "rb") as fh:
        reader = make_reader(fh, decoder_factories=[DecoderFactory()])
        meta = {m.name: dict(m.metadata) for m in reader.iter_metadata()}
        for _, channel, message, msg in reader.iter_decoded_messages(log_time_order=True):
            by_topic[channel.topic].append((message.log_time, message.publish_time, msg))
    return by_topic, meta


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def fleet_fixture(simulate: Callable[..., Path], n_episodes: int, seed: int, fault_rate: float, **options):
    """A module-scoped fixture: (output folder, ground-truth records) of one simulated fleet."""

    @pytest.fixture(scope="module")
    def fleet(tmp_path_factory) -> tuple[Path, list[dict]]:
        out = tmp_path_factory.mktemp("fleet")
        return out, read_ground_truth(simulate(n_episodes, out, seed=seed, fault_rate=fault_rate, **options))

    return fleet


fleet = fleet_fixture(simulate_fleet, 10, seed=7, fault_rate=0.5, episode_steps=FLEET_STEPS)


def test_skills_agree_with_robot_profile():
    profile = yaml.safe_load((REPO / "datasets/robots/ant.yaml").read_text())
    assert profile["skills"] == SKILLS
    assert set(load_gaits()) == set(SKILLS)


def test_env_layout_matches_ant_v5():
    env = make_env(seed=3)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (27,)
    np.testing.assert_array_equal(observe(env), obs)
    np.testing.assert_array_equal(joint_of_actuator(env), JOINT_OF_ACTUATOR)
    assert env.unwrapped.dt == pytest.approx(0.01)
    env.close()


def test_progress_measures():
    # 1 m along a heading of 90 degrees is forward; yaw unwraps past pi.
    assert progress("walk forward", [0, 0, np.pi / 2], [0.0, 1.0, np.pi / 2]) == pytest.approx(1.0)
    assert progress("walk forward", [0, 0, 0], [-2.0, 0.5, 0]) == pytest.approx(-2.0)
    yaw = np.linspace(0, 4.0, 50)
    wrapped = np.angle(np.exp(1j * yaw))
    poses = np.stack([np.zeros(50), np.zeros(50), wrapped], 1)
    assert trajectory_progress("turn left", poses) == pytest.approx(4.0)
    assert trajectory_progress("turn right", poses[::-1]) == pytest.approx(-4.0)
    with pytest.raises(ValueError, match="unknown skill"):
        progress("jump", [0, 0, 0], [0, 0, 0])


def test_expert_walks_forward_and_beats_random():
    seeds = (11, 12, 13)
    expert = [rollout(operator_policy("expert", "walk forward", s), "walk forward", s) for s in seeds]
    random = [rollout(operator_policy("random", "walk forward", s), "walk forward", s) for s in seeds]
    for r in expert:
        assert not r["fell"] and r["n_steps"] == 200
        assert r["progress"] >= 2.5, r
    # Flailing sometimes hops a few metres, but on average goes nowhere.
    assert np.mean([r["progress"] for r in expert]) > np.mean([r["progress"] for r in random]) + 2.0


@pytest.mark.parametrize("skill,sign", [("turn left", 1.0), ("turn right", -1.0)])
def test_expert_turns_the_right_way(skill, sign):
    for s in (21, 22):
        r = rollout(operator_policy("expert", skill, s), skill, s)
        assert not r["fell"]
        assert sign * r["progress"] >= 2.0, r


def test_rollout_is_reproducible_and_rejects_bad_actions():
    a = rollout(operator_policy("medium", "turn left", 5), "turn left", 5, steps=40)
    b = rollout(operator_policy("medium", "turn left", 5), "turn left", 5, steps=40)
    assert a == b and a["n_steps"] == 40
    with pytest.raises(ValueError, match="8 finite torques"):
        rollout(lambda obs: np.full(8, np.nan), "turn left", 5, steps=2)
    with pytest.raises(ValueError, match="unknown operator"):
        operator_policy("robot", "turn left", 0)


def test_fleet_ground_truth_lists_every_file(fleet):
    out, truth = fleet
    files = sorted(p.name for p in out.glob("*.mcap"))
    assert sorted(r["file"] for r in truth) == files and len(files) == 10
    assert not list(out.glob(".*"))  # no temporary files left behind
    assert sorted(collections.Counter(r["skill"] for r in truth).values()) == [3, 3, 4]  # evenly mixed
    # fault_rate 0.5 of 10 files: five faulty files, one of each kind.
    assert sorted(r["fault"] for r in truth if r["fault"]) == sorted(FAULT_KINDS)
    for r in truth:
        assert r["operator"] in {"expert", "medium", "poor", "random"}
        assert r["robot_id"].startswith("ant-") and r["file"].startswith(r["robot_id"])
        assert 1 <= r["n_steps"] <= FLEET_STEPS and isinstance(r["fell"], bool)
        assert r["fell"] or r["n_steps"] == FLEET_STEPS


def test_fleet_ground_truth_matches_replayed_episode(fleet):
    _, truth = fleet
    r = next(t for t in truth if t["operator"] != "random")
    replay = rollout(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], steps=FLEET_STEPS)
    assert replay["progress"] == pytest.approx(r["progress"], abs=1e-6)
    assert replay["n_steps"] == r["n_steps"] and replay["fell"] == r["fell"]


def test_clean_files_have_topics_counts_and_no_operator(fleet):
    out, truth = fleet
    clean = [r for r in truth if r["fault"] is None]
    assert clean
    for r in clean:
        topics, meta = read_mcap(out / r["file"])
        n = r["n_steps"]
        assert meta == {"robot": {"robot_id": r["robot_id"]}}
        assert len(topics["/cmd_joint"]) == n
        n_js = len(topics["/joint_states"])
        n_samples = 5 * n + 1 if not r["fell"] else n_js
        assert 5 * (n - 1) + 2 <= n_js == n_samples <= 5 * n + 1
        assert len(topics["/odom"]) == (n_js + 1) // 2
        assert topics["/instruction"][0][2].data == r["instruction"]
        assert len(topics["/instruction"]) == 1 + (n_js - 1) // 100  # at the start, then every 1 s
        events = [m.data for _, _, m in topics["/events"]]
        assert events == ["episode_start"] + (["fall_detected"] if r["fell"] else []) + ["episode_end"]
        js = topics["/joint_states"][5][2]
        assert list(js.name) == JOINT_NAMES and len(js.position) == len(js.velocity) == len(js.effort) == 8
        # Times are realistic: within the day before the base date, 100 Hz with < 2 ms jitter.
        stamps = np.array([stamp_ns(m) for _, _, m in topics["/joint_states"]])
        logs = np.array([lt for lt, _, _ in topics["/joint_states"]])
        assert np.all(np.diff(stamps) == 10_000_000)
        assert np.all((logs - stamps >= 0) & (logs - stamps < 2_000_000))
        assert abs(stamps[0] - r["start_time_ns"]) == 0
        # The operator is ground truth only: no string in the log names it.
        strings = [m.data for name in ("/instruction", "/events") for _, _, m in topics[name]]
        strings += [v for record in meta.values() for v in record.values()]
        assert not any(r["operator"] in s for s in strings)


def test_state_rebuilt_from_log_equals_what_the_policy_saw(fleet):
    out, truth = fleet
    r = next(t for t in truth if t["fault"] is None and not t["fell"])
    topics, _ = read_mcap(out / r["file"])
    ep = simulate_episode(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], FLEET_STEPS)
    seen, obs = ep.policy_states(), ep.observations()
    js, odom, cmd = topics["/joint_states"], topics["/odom"], topics["/cmd_joint"]
    js_log = np.array([lt for lt, _, _ in js])
    odom_log = np.array([lt for lt, _, _ in odom])
    for k in range(FLEET_STEPS):
        cmd_log = cmd[k][0]
        # What an ingest sees: the newest state messages logged before the command.
        j = js[np.searchsorted(js_log, cmd_log) - 1][2]
        o = odom[np.searchsorted(odom_log, cmd_log) - 1][2]
        # /odom (50 Hz) has a sample at every even control step, and one 10 ms older at odd ones.
        assert stamp_ns(j) == r["start_time_ns"] + k * 50_000_000
        assert stamp_ns(o) == stamp_ns(j) - (k % 2) * 10_000_000
        p, q, tw = o.pose.pose.position, o.pose.pose.orientation, o.twist.twist
        state = np.array(
            [p.z, q.w, q.x, q.y, q.z, *j.position, tw.linear.x, tw.linear.y, tw.linear.z,
             tw.angular.x, tw.angular.y, tw.angular.z, *j.velocity]
        )
        np.testing.assert_array_equal(state, seen[k])
        if k % 2 == 0:
            np.testing.assert_array_equal(state, obs[5 * k])
        np.testing.assert_array_equal(np.array(cmd[k][2].data), ep.actions[k])


def assert_faults_planted(out: Path, truth: list[dict], joints: str, states: tuple[str, ...], cmd: str,
                          nan_rows: tuple[int, int] = (12, 30)) -> None:
    """Every fault kind is planted as simulator.faults states, on the log's own topics (shared by the
    fleet tests: the Ant, the arm, the Ant at a second site)."""
    by_fault = {r["fault"]: r for r in truth if r["fault"]}
    assert set(by_fault) == set(FAULT_KINDS)

    with pytest.raises(McapError):
        read_mcap(out / by_fault["truncated"]["file"])

    topics, _ = read_mcap(out / by_fault["wrong_topic"]["file"])
    assert joints not in topics and len(topics[joints[:-1]]) > 0

    topics, _ = read_mcap(out / by_fault["nan"]["file"])
    pos = np.array([m.position for _, _, m in topics[joints]])
    assert nan_rows[0] <= np.isnan(pos).any(axis=1).sum() <= nan_rows[1] and not np.isnan(pos[:5]).any()

    topics, _ = read_mcap(out / by_fault["dropped"]["file"])
    for name in states:
        stamps = np.array([stamp_ns(m) for _, _, m in topics[name]])
        assert np.diff(stamps).max() > 500_000_000
    cmd_gaps = np.diff([lt for lt, _, _ in topics[cmd]])
    assert cmd_gaps.max() < 100_000_000  # commands kept flowing

    topics, _ = read_mcap(out / by_fault["time_jump"]["file"])
    cmd_logs = np.array([lt for lt, _, _ in topics[cmd]])
    assert np.diff(cmd_logs).max() > 2_900_000_000
    assert len(cmd_logs) == by_fault["time_jump"]["n_steps"]


def test_faults_are_planted_as_stated(fleet):
    assert_faults_planted(*fleet, joints="/joint_states", states=("/joint_states", "/odom"), cmd="/cmd_joint")


def assert_deterministic_in_parallel(simulate: Callable[..., Path], tmp_path: Path, operator: str) -> None:
    """Two processes write the same files, byte for byte, and the same ground truth as one."""
    a = simulate(2, tmp_path / "a", seed=3, episode_steps=10, operators={operator: 1.0})
    b = simulate(2, tmp_path / "b", seed=3, episode_steps=10, operators={operator: 1.0}, workers=2)
    ra, rb = read_ground_truth(a), read_ground_truth(b)
    assert ra == rb
    assert all((tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes() for r in ra)


def test_fleet_is_deterministic_in_parallel_and_checks_arguments(tmp_path):
    assert_deterministic_in_parallel(simulate_fleet, tmp_path, "random")
    with pytest.raises(ValueError, match="fault_rate"):
        simulate_fleet(2, tmp_path / "c", fault_rate=1.5)
    with pytest.raises(ValueError, match="unknown operators"):
        simulate_fleet(2, tmp_path / "c", operators={"novice": 1.0})
    assert json.loads((tmp_path / "a" / "ground_truth.jsonl").read_text().splitlines()[0])["fault"] is None
