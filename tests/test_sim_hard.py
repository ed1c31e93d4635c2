"""Hard fleets: operators as smooth as the expert who still do badly, and noisy, drifting, jittered sensors.

Measured on real MuJoCo rollouts and real MCAP files read back; nothing here is stubbed.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_sim import read_mcap, stamp_ns

from simulator.driver import HARD_OPERATOR_NAMES, HARD_OPERATORS, OPERATOR_NAMES, read_ground_truth
from simulator.embodiments import get_embodiment
from simulator.noise import SensorNoise

GOOD = ("expert", "medium")


def action_jerk(actions: np.ndarray) -> float:
    """Mean absolute second difference of the commands (per control step, per actuator)."""
    return float(np.abs(np.diff(actions, 2, axis=0)).mean())


def _modules(embodiment: str):
    if embodiment == "ant":
        from simulator import operators, rollout
    else:
        from simulator.arm import operators, rollout
    return operators.operator_policy, rollout.simulate_episode


@pytest.fixture(scope="module", params=["ant", "arm"])
def measured(request) -> tuple[str, dict[str, dict[str, float]]]:
    """Per operator kind: mean progress as a share of the skill's target (signed) and mean action jerk,
    over every skill and two seeds, full-length episodes."""
    name = request.param
    policy, simulate = _modules(name)
    skills = get_embodiment(name).skills
    out = {}
    for kind in (*GOOD, "poor", *HARD_OPERATOR_NAMES):
        eps = [(skill, simulate(policy(kind, skill, s), skill, s)) for skill in skills for s in (31, 32)]
        out[kind] = {"progress": float(np.mean([ep.progress / skills[sk]["target"] for sk, ep in eps])),
                     "jerk": float(np.mean([action_jerk(ep.actions) for _, ep in eps])),
                     "fell": sum(bool(ep.fell) for _, ep in eps)}
    return name, out


def test_hard_operators_move_as_smoothly_as_the_expert(measured):
    name, m = measured
    for kind in HARD_OPERATOR_NAMES:
        assert m[kind]["jerk"] <= 1.25 * m["expert"]["jerk"], (name, kind, m)
        assert m[kind]["jerk"] < 0.6 * m["poor"]["jerk"], (name, kind, m)  # unlike the old bad operators
        assert m[kind]["fell"] == 0, (name, kind, m)


def test_hard_operators_make_clearly_less_progress(measured):
    name, m = measured
    good = np.mean([m[k]["progress"] for k in GOOD])
    assert good > 0.9, (name, m)
    for kind in HARD_OPERATOR_NAMES:
        assert m[kind]["progress"] < 0.6 * good, (name, kind, m)


@pytest.mark.parametrize("name", ["ant", "arm"])
def test_hard_operators_are_deterministic_and_do_what_they_say(name):
    policy, simulate = _modules(name)
    skill = next(iter(get_embodiment(name).skills))
    for kind in HARD_OPERATOR_NAMES:
        a = simulate(policy(kind, skill, 5), skill, 5, 40).actions
        np.testing.assert_array_equal(a, simulate(policy(kind, skill, 5), skill, 5, 40).actions)
    # The wrong-skill operator keeps one other skill all episode; the hesitant one pauses mid-task.
    assert policy("smooth_wrong_skill", skill, 5).segment_skills[0] != skill
    op, paused = policy("hesitant", skill, 5), []

    def watched(obs: np.ndarray) -> np.ndarray:
        action = op(obs)
        paused.append(op.hesitation_left > 0)
        return action

    simulate(watched, skill, 5)
    paused = np.array(paused)
    first = int(np.argmax(paused))
    assert 0.5 * op.control_hz <= first <= 2.5 * op.control_hz and paused.mean() > 0.3
    run = np.diff(np.flatnonzero(np.diff(np.r_[0, paused.astype(int), 0])))[::2]
    assert run.max() >= 1.5 * op.control_hz  # a pause of seconds, not a hiccup


@pytest.mark.parametrize("name", ["ant", "arm"])
def test_hard_mix_names_every_operator_in_ground_truth(name, tmp_path):
    assert set(HARD_OPERATORS) == set(OPERATOR_NAMES) and sum(HARD_OPERATORS.values()) == pytest.approx(1.0)
    assert HARD_OPERATORS["expert"] == 0.25 and HARD_OPERATORS["medium"] == 0.20
    emb = get_embodiment(name)
    truth = read_ground_truth(emb.simulate_fleet(8, tmp_path, seed=4, fault_rate=0.0, episode_steps=20,
                                                 operators="hard"))
    assert {r["operator"] for r in truth} >= set(HARD_OPERATOR_NAMES)
    assert all("sensor_noise" not in r for r in truth)
    policy, simulate = _modules(name)
    r = next(t for t in truth if t["operator"] == "hesitant")
    replay = simulate(policy(r["operator"], r["skill"], r["seed"]), r["skill"], r["seed"], 20)
    assert replay.progress == pytest.approx(r["progress"], abs=1e-6)
    with pytest.raises(ValueError, match="unknown operator mix 'harder'; known mixes: default, hard"):
        emb.simulate_fleet(2, tmp_path / "x", operators="harder")


def _values(msg) -> list[float]:
    """The numbers a message carries (no header): positions first for poses."""
    if hasattr(msg, "data"):
        return list(msg.data)
    if hasattr(msg, "name"):
        return [*msg.position, *msg.velocity, *msg.effort]
    pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose
    return [pose.position.x, pose.position.y, pose.position.z, pose.orientation.w, pose.orientation.z]


def _fleet(name: str, out, noise):
    emb = get_embodiment(name)
    return read_ground_truth(emb.simulate_fleet(3, out, seed=9, fault_rate=0.0, episode_steps=30,
                                                operators="hard", noise=noise))


@pytest.mark.parametrize("name,pose,fixed", [
    ("ant", "/odom", ("/joint_states", "/cmd_joint")),
    ("arm", "/arm/ee_pose", ("/arm/joint_states", "/arm/cmd", "/arm/target")),
])
def test_noise_changes_the_logged_pose_not_the_commands(name, pose, fixed, tmp_path):
    clean, noisy = _fleet(name, tmp_path / "clean", None), _fleet(name, tmp_path / "noisy", "realistic")
    for c, n in zip(clean, noisy):
        # The physics and the true progress are the same; only what the sensors logged differs.
        assert {k: v for k, v in c.items() if k != "sha256"} == {k: v for k, v in n.items()
                                                                 if k not in ("sha256", "sensor_noise")}
        noise = n["sensor_noise"]
        assert noise["name"] == "realistic" and noise["topic"] == pose and noise["stamp_jitter_ms"] == 1.0
        assert set(noise["drift_end"]) == {"x_m", "y_m", "yaw_rad"}
        tc, tn = read_mcap(tmp_path / "clean" / c["file"])[0], read_mcap(tmp_path / "noisy" / n["file"])[0]
        for topic in fixed:
            assert [_values(m) for _, _, m in tc[topic]] == [_values(m) for _, _, m in tn[topic]], topic
        pc, pn = (np.array([_values(m)[:2] for _, _, m in t[pose]]) for t in (tc, tn))
        err = np.linalg.norm(pn - pc, axis=1)
        scale = noise["position_std_m"]
        assert 0.3 * scale < np.median(err) < 10 * scale
        np.testing.assert_allclose(pn[-1] - pc[-1], [noise["drift_end"]["x_m"], noise["drift_end"]["y_m"]],
                                   atol=6 * scale)
        # Stamps jitter off the 10 ms grid but keep their order; commands keep theirs.
        stamps = np.array([stamp_ns(m) for _, _, m in tn[fixed[0]]])
        assert np.all(np.diff(stamps) > 0) and np.any(stamps % 10_000_000 != stamps[0] % 10_000_000)
        cmd = fixed[1]
        assert [lt for lt, _, _ in tc[cmd]] == [lt for lt, _, _ in tn[cmd]]


def test_noisy_hard_fleet_is_deterministic_in_parallel(tmp_path):
    emb = get_embodiment("ant")
    kw = dict(seed=6, fault_rate=0.5, episode_steps=50, operators="hard", noise="realistic", layout="second_site")
    a = read_ground_truth(emb.simulate_fleet(4, tmp_path / "a", **kw))
    b = read_ground_truth(emb.simulate_fleet(4, tmp_path / "b", workers=2, **kw))
    assert a == b and sum(r["fault"] is not None for r in a) == 2
    assert all((tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes() for r in a)


def test_sensor_noise_checks_its_settings(tmp_path):
    assert not SensorNoise().active and SensorNoise(stamp_jitter_ms=0.5).active
    with pytest.raises(ValueError, match="finite number >= 0"):
        SensorNoise(name="bad", yaw_std_rad=-0.1)
    with pytest.raises(ValueError, match="unknown sensor noise 'loud'; known: none, realistic"):
        get_embodiment("arm").simulate_fleet(1, tmp_path, noise="loud")
