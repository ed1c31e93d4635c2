"""The simulated arm fleet (Reacher-v5): graded operators, real ROS 2 MCAP logs, and a logged state that
equals what a policy sees in closed-loop rollouts, read through the arm's source mapping."""
from __future__ import annotations

import collections
from pathlib import Path

import mujoco
import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from test_sim import assert_deterministic_in_parallel, assert_faults_planted, fleet_fixture, read_mcap, stamp_ns

from foundations.profile import load_profile
from foundations.storage import sha256_file
from simulator.arm.fleet import simulate_fleet
from simulator.arm.operators import operator_policy
from simulator.arm.rollout import reference_progress, rollout, simulate_episode
from simulator.arm.skills import SKILLS, STATE_LAYOUT, fingertip, make_env, observe, progress
from simulator.embodiments import EMBODIMENTS, get_embodiment

REPO = Path(__file__).resolve().parents[1]
MAPPING = yaml.safe_load((REPO / "datasets/sources/arm_fleet_ros2.yaml").read_text())
FLEET_STEPS = 60  # 3 s episodes keep the test fast; mid-episode faults need >= 2 s
TYPES = {
    "/arm/joint_states": "sensor_msgs/msg/JointState",
    "/arm/ee_pose": "geometry_msgs/msg/PoseStamped",
    "/arm/target": "geometry_msgs/msg/PoseStamped",
    "/arm/cmd": "std_msgs/msg/Float64MultiArray",
    "/arm/instruction": "std_msgs/msg/String",
    "/arm/events": "std_msgs/msg/String",
    "/arm/camera/compressed": "sensor_msgs/msg/CompressedImage",
}


fleet = fleet_fixture(simulate_fleet, 10, seed=5, fault_rate=0.5, episode_steps=FLEET_STEPS)


def test_profile_and_mapping_agree_with_the_simulator():
    profile = load_profile("arm")
    assert {k: {"measure": s.measure, "target": s.target} for k, s in profile.skills.items()} == SKILLS
    assert profile.action_bounds == (-1.0, 1.0)
    assert STATE_LAYOUT[profile.joint_velocity.start:][: profile.joint_velocity.count] == ("qd0", "qd1")
    assert (profile.end_effector.feature, profile.end_effector.count) == ("observation.ee", 2)
    assert (profile.target.feature, profile.target.count) == ("observation.target", 2)
    assert MAPPING["robot"] == "arm" and MAPPING["control"]["topic"] == "/arm/cmd"
    assert set(profile.features) <= set(MAPPING["features"])
    assert "arm" in EMBODIMENTS and "ant" in EMBODIMENTS
    arm = get_embodiment("arm")
    assert (arm.robot_profile, arm.source, arm.skills, arm.control_hz) == ("arm", "arm_fleet_ros2", SKILLS, 20)
    with pytest.raises(ValueError, match="known: ant, arm"):
        get_embodiment("hexapod")


def test_fingertip_and_target_match_mujoco():
    env = make_env(seed=4)
    data, model = env.unwrapped.data, env.unwrapped.model
    for a in ([1.0, -0.5], [-0.3, 1.0]):
        for _ in range(7):
            env.step(np.array(a))
    mujoco.mj_forward(model, data)  # body positions of the current state (a step leaves them one behind)
    state = observe(env)
    np.testing.assert_allclose(state[4:6], data.body("fingertip").xpos[:2], atol=1e-12)
    np.testing.assert_allclose(state[6:8], data.body("target").xpos[:2], atol=1e-12)
    np.testing.assert_array_equal(state[:4], np.r_[data.qpos[:2], data.qvel[:2]])
    env.close()


def test_progress_measures():
    target = np.array([0.0, 0.1])
    ee = np.array([[0.2, 0.1], [0.1, 0.1], [0.05, 0.1]])
    assert progress("reach the target", ee, target) == pytest.approx(0.75)
    assert progress("reach the target", ee[::-1], target) == pytest.approx(-3.0)
    turn = np.linspace(0.0, 4.0, 60)  # past pi: the bearing unwraps
    circle = 0.15 * np.stack([np.cos(turn), np.sin(turn)], 1)
    assert progress("sweep left", circle, target) == pytest.approx(4.0)
    assert progress("sweep right", circle[::-1], target) == pytest.approx(-4.0)
    np.testing.assert_allclose(fingertip([0.0, 0.0]), [0.21, 0.0])
    np.testing.assert_allclose(fingertip([np.pi / 2, -np.pi / 2]), [0.11, 0.1], atol=1e-12)
    with pytest.raises(ValueError, match="unknown skill"):
        progress("wave", ee, target)


@pytest.mark.parametrize("skill", list(SKILLS))
def test_expert_beats_medium_beats_random(skill):
    sign = np.sign(SKILLS[skill]["target"])
    seeds = (101, 102, 103, 104)
    means = {op: np.mean([sign * rollout(operator_policy(op, skill, s), skill, s)["progress"] for s in seeds])
             for op in ("expert", "medium", "random")}
    assert means["expert"] > means["medium"] > means["random"], means
    assert means["expert"] - means["random"] > 0.5 * abs(SKILLS[skill]["target"]), means
    for s in seeds:  # the expert truly performs the skill
        assert sign * rollout(operator_policy("expert", skill, s), skill, s)["progress"] >= abs(SKILLS[skill]["target"])


def test_rollout_contract_and_reference():
    a = rollout(operator_policy("poor", "sweep left", 9), "sweep left", 9, steps=30)
    assert a == rollout(operator_policy("poor", "sweep left", 9), "sweep left", 9, steps=30)
    assert {"instruction", "seed", "progress", "fell", "steps"} <= set(a) and a["steps"] == 30 and a["fell"] is False
    seen = []
    rollout(lambda s: seen.append(np.array(s)) or np.zeros(2), "reach the target", 9, steps=3)
    assert [s.shape for s in seen] == [(8,)] * 3
    with pytest.raises(ValueError, match="2 finite torques"):
        rollout(lambda s: np.full(3, 0.1), "sweep left", 9, steps=2)
    with pytest.raises(ValueError, match="unknown operator"):
        operator_policy("novice", "sweep left", 0)
    expert = reference_progress("expert", "sweep right", [1, 2], steps=60)
    random = reference_progress("random", "sweep right", [1, 2], steps=60)
    assert expert < -1.0 and expert < random


def test_ground_truth_matches_files(fleet):
    out, truth = fleet
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mcap"))
    assert sorted(r["file"] for r in truth) == files and len(files) == 10
    assert not list(out.glob(".*"))
    assert sorted(collections.Counter(r["skill"] for r in truth).values()) == [3, 3, 4]
    ant_keys = {"file", "sha256", "robot_id", "operator", "skill", "instruction", "measure", "n_steps", "fell",
                "progress", "env_return", "fault", "fault_detail", "seed", "start_time_ns", "episode_index"}
    for r in truth:
        assert ant_keys <= set(r) and r["fell"] is False and r["n_steps"] == FLEET_STEPS
        assert r["sha256"] == sha256_file(out / r["file"]) and r["robot_id"].startswith("arm-")
        assert r["measure"] == SKILLS[r["skill"]]["measure"]
    r = next(t for t in truth if t["operator"] != "random")
    replay = simulate_episode(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], FLEET_STEPS)
    assert replay.progress == pytest.approx(r["progress"], abs=1e-6)
    np.testing.assert_allclose(replay.target, r["target_xy"], atol=1e-6)


def test_clean_files_decode_with_declared_topics_and_types(fleet):
    out, truth = fleet
    clean = [r for r in truth if r["fault"] is None]
    mapped = {spec["topic"] for specs in MAPPING["features"].values() for spec in specs}
    mapped |= {MAPPING["instruction"]["topic"], MAPPING["episode_markers"]["topic"], MAPPING["control"]["topic"]}
    assert mapped == set(TYPES)
    for r in clean:
        with open(out / r["file"], "rb") as fh:
            summary = make_reader(fh).get_summary()
        types = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        assert types == TYPES
        topics, meta = read_mcap(out / r["file"])
        assert meta == {"robot": {"robot_id": r["robot_id"]}}
        n = r["n_steps"]
        assert [len(topics[t]) for t in ("/arm/cmd", "/arm/joint_states", "/arm/ee_pose", "/arm/target")] == [
            n, 5 * n + 1, (5 * n) // 2 + 1, (5 * n) // 10 + 1]
        assert [m.data for _, _, m in topics["/arm/events"]] == ["episode_start", "episode_end"]
        assert topics["/arm/instruction"][0][2].data == r["instruction"]
        js = topics["/arm/joint_states"][3][2]
        assert list(js.name) == ["joint0", "joint1"] and len(js.position) == len(js.velocity) == 2
        target = topics["/arm/target"][-1][2].pose.position
        np.testing.assert_allclose([target.x, target.y], r["target_xy"], atol=1e-6)
        stamps = np.array([stamp_ns(m) for _, _, m in topics["/arm/joint_states"]])
        logs = np.array([lt for lt, _, _ in topics["/arm/joint_states"]])
        assert np.all(np.diff(stamps) == 10_000_000) and stamps[0] == r["start_time_ns"]
        assert np.all((logs - stamps >= 0) & (logs - stamps < 2_000_000))
        cmds = np.array([m.data for _, _, m in topics["/arm/cmd"]])
        assert cmds.shape == (n, 2) and np.all(np.abs(cmds) <= 1.0)


def _value(msg, spec: dict) -> list[float]:
    """The numbers a mapping field spec picks out of one decoded message (the forms the arm mapping uses)."""
    obj = msg
    for part in spec["field"].split("."):
        obj = getattr(obj, part)
    if "names" in spec:
        names = list(msg.name)
        return [float(obj[names.index(n)]) for n in spec["names"]]
    if "components" in spec:
        return [float(getattr(obj, c)) for c in spec["components"]]
    if "size" in spec:
        assert len(obj) == spec["size"]
        return [float(v) for v in obj]
    return [float(obj)]


def test_logged_state_through_the_mapping_equals_what_a_policy_sees(fleet):
    """Build observation.state (and ee, target, action) from the decoded MCAP as the mapping declares it:
    one step per control message, every other topic's newest message by log time within its tolerance."""
    out, truth = fleet
    r = next(t for t in truth if t["fault"] is None and t["operator"] == "medium")
    topics, _ = read_mcap(out / r["file"])
    control = MAPPING["control"]
    tolerance = {t: MAPPING.get("streams", {}).get(t, {}).get("tolerance_s", control["tolerance_s"]) for t in TYPES}
    steps = [lt for lt, _, _ in topics[control["topic"]]]
    logs = {t: np.array([lt for lt, _, _ in topics[t]]) for t in TYPES}

    def feature(name: str, step_ns: int) -> list[float]:
        row = []
        for spec in MAPPING["features"][name]:
            i = int(np.searchsorted(logs[spec["topic"]], step_ns, side="right")) - 1
            assert i >= 0 and step_ns - logs[spec["topic"]][i] <= tolerance[spec["topic"]] * 1e9, spec
            row += _value(topics[spec["topic"]][i][2], spec)
        return row

    ep = simulate_episode(operator_policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], FLEET_STEPS)
    seen = ep.policy_states()
    state = np.array([feature("observation.state", s) for s in steps])
    np.testing.assert_allclose(state, seen, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.array([feature("observation.ee", s) for s in steps]), seen[:, 4:6], atol=1e-12)
    np.testing.assert_allclose(np.array([feature("observation.target", s) for s in steps]), seen[:, 6:8], atol=1e-12)
    np.testing.assert_array_equal(np.array([feature("action", s) for s in steps]), ep.actions)
    # Joints are exact at every step; the 50 Hz fingertip pose is exact at even steps, 10 ms old at odd ones.
    exact = ep.states()[::5][:FLEET_STEPS]
    np.testing.assert_array_equal(seen[:, :4], exact[:, :4])
    np.testing.assert_array_equal(seen[::2], exact[::2])
    np.testing.assert_array_equal(seen[1::2, 4:6], ep.states()[4::10][: len(seen[1::2]), 4:6])


def test_faults_are_planted_on_the_arm_topics(fleet):
    assert_faults_planted(*fleet, joints="/arm/joint_states", states=("/arm/joint_states", "/arm/ee_pose", "/arm/target"),
                          cmd="/arm/cmd")


def test_arm_fleet_is_deterministic_in_parallel(tmp_path):
    assert_deterministic_in_parallel(simulate_fleet, tmp_path, "expert")
    with pytest.raises(ValueError, match="unknown layout"):
        simulate_fleet(1, tmp_path / "c", layout="second_site")
