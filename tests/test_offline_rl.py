"""Offline RL on the canonical table: dataset building, rejections, training, checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from foundations.schema import ACTION, QUARANTINE_SCHEMA, STATE
from foundations.publish import resolve_version
from foundations.recipes import load_recipe
from training.checkpoints import (
    dataset_lineage, find_checkpoint, latest_checkpoint, list_checkpoints, load_adapters, load_checkpoint,
    save_checkpoint,
)
from training.lora_moe import LoRAMoEEncoderFactory, adapter_state_dict
from training.offline_rl import TrainConfig, build_mdp_dataset, policy_actions, split_trainable, train
from training.policy_average import PolicyAverage, policy_module
from test_publish import do_publish, make_episodes, write_recipe
from training_tables import INSTRUCTIONS, episode_table, tiny_bert_dir


UNIT = (-1.0, 1.0)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert"))


def tiny_config(tiny_dir: str, **kw) -> TrainConfig:
    kw.setdefault("n_steps", 10)
    kw.setdefault("n_steps_per_epoch", 5)
    kw.setdefault("batch_size", 16)
    kw.setdefault("eval_episodes", 2)
    kw.setdefault("action_bounds", UNIT)
    encoder = LoRAMoEEncoderFactory(model_dir=tiny_dir, n_layers=1, feature_size=32)
    return TrainConfig(encoder=encoder, num_threads=1, **kw)


def test_dataset_terminals_timeouts_and_instruction_index():
    table = episode_table(n_episodes=6, steps=10)  # episodes 0 and 3 fall (terminal), the rest time out
    dataset = build_mdp_dataset(table, "reward", INSTRUCTIONS, UNIT)
    assert len(dataset.episodes) == 6
    assert [ep.terminated for ep in dataset.episodes] == [True, False, False, True, False, False]
    # A terminal episode keeps its last transition (no bootstrap); a timeout cannot use it.
    assert dataset.transition_count == 2 * 10 + 4 * 9
    first = dataset.episodes[0]
    assert first.observations.shape == (10, 28)
    np.testing.assert_array_equal(first.observations[:, :27], np.stack(table[STATE].to_list()[:10]))
    expected_index = [INSTRUCTIONS.index(s) for s in table["language_instruction"].to_list()[::10]]
    assert [int(ep.observations[0, -1]) for ep in dataset.episodes] == expected_index
    np.testing.assert_allclose(first.rewards[:, 0], table["reward"].to_numpy()[:10])


def test_split_trainable_rejects_bad_episodes_with_reasons():
    table = episode_table(n_episodes=9, steps=8)
    ids = table["episode_id"].unique().sort().to_list()
    nan_state = [float("nan")] + [0.0] * 26
    table = table.with_columns(
        pl.when((pl.col("episode_id") == ids[0]) & (pl.col("step") == 3)).then(pl.lit(nan_state, pl.List(pl.Float32)))
        .otherwise(pl.col(STATE)).alias(STATE),
        pl.when((pl.col("episode_id") == ids[1]) & (pl.col("step") == 2)).then(pl.lit([0.0] * 5, pl.List(pl.Float32)))
        .otherwise(pl.col(ACTION)).alias(ACTION),
        pl.when((pl.col("episode_id") == ids[2]) & (pl.col("step") == 0)).then(None)
        .otherwise(pl.col("reward")).alias("reward"),
        pl.when(pl.col("episode_id") == ids[3]).then(pl.lit("dance")).otherwise(pl.col("language_instruction"))
        .alias("language_instruction"),
        pl.when(pl.col("episode_id") == ids[4]).then(False).otherwise(pl.col("is_last")).alias("is_last"),
        pl.when((pl.col("episode_id") == ids[5]) & (pl.col("step") == 2)).then(True)
        .otherwise(pl.col("is_terminal")).alias("is_terminal"),
    )
    table = table.filter(~((pl.col("episode_id") == ids[6]) & (pl.col("step") == 4)))  # a gap in the steps

    clean, rejected = split_trainable(table, "reward", INSTRUCTIONS, UNIT)
    assert rejected.schema == pl.Schema(QUARANTINE_SCHEMA)
    checks = dict(zip(rejected["episode_id"], rejected["check"]))
    assert checks == {
        ids[0]: "finite_values", ids[1]: "action_width", ids[2]: "reward_missing", ids[3]: "unknown_instruction",
        ids[4]: "episode_bounds", ids[5]: "early_terminal", ids[6]: "step_order",
    }
    assert (rejected["stage"] == "training").all() and (rejected["source_file"] == "synthetic.mcap").all()
    reason = rejected.filter(pl.col("episode_id") == ids[0])["reason"][0]
    assert "1 of 8 steps" in reason and "observation.state" in reason
    assert sorted(clean["episode_id"].unique()) == ids[7:]
    # Behaviour cloning needs no reward: the null-reward episode is fine then.
    _, rejected_bc = split_trainable(table, None, INSTRUCTIONS, UNIT)
    assert ids[2] not in rejected_bc["episode_id"].to_list()

    with pytest.raises(ValueError, match="cannot be trained on: .*finite_values"):
        build_mdp_dataset(table, "reward", INSTRUCTIONS, UNIT)


def test_too_few_steps_is_refused_with_the_fix(tiny_dir):
    with pytest.raises(ValueError, match="n_steps=5 is below n_steps_per_epoch=10.*train nothing"):
        train(episode_table(), tiny_config(tiny_dir, n_steps=5, n_steps_per_epoch=10), progress=False)
    with pytest.raises(ValueError, match="reward column 'combined_reward'"):
        train(episode_table(), tiny_config(tiny_dir, reward_column="combined_reward"), progress=False)


def test_train_bc_and_iql_and_report_rejections(tiny_dir):
    table = episode_table(n_episodes=9, steps=16)
    bad = table["episode_id"][0]
    table = table.with_columns(
        pl.when(pl.col("episode_id") == bad).then(None).otherwise(pl.col("reward")).alias("reward")
    )
    iql = train(table, tiny_config(tiny_dir, algorithm="iql"), progress=False)
    assert iql.rejected["episode_id"].to_list() == [bad] and iql.n_episodes == 8
    assert iql.curve.height == 2 and {"critic_loss", "actor_loss", "td_error", "initial_state_value"} <= set(
        iql.curve.columns
    )
    assert np.isfinite(iql.curve["td_error"].to_numpy()).all()
    kept_rewards = table.filter(pl.col("episode_id") != bad)["reward"]
    assert iql.reward_scale == pytest.approx(1.0 / kept_rewards.std(), rel=1e-4)  # scaled, never shifted

    seen = []  # on_epoch: called after each epoch with the updates so far and the algorithm being trained
    bc = train(table, tiny_config(tiny_dir, algorithm="bc", n_steps=30, n_steps_per_epoch=10,
                                   actor_learning_rate=3e-3), progress=False,
               on_epoch=lambda step, algo: seen.append((step, algo)))
    assert [step for step, _ in seen] == [10, 20, 30] and all(algo is bc.algo for _, algo in seen)
    assert bc.rejected.is_empty() and bc.n_episodes == 9  # BC ignores rewards
    losses = bc.curve["loss"].to_list()
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert sum(bc.expert_usage["imitator._encoder.body"][0]) == 30 * 16 * 2

    states = np.stack(table[STATE].to_list()[:5])
    actions = policy_actions(bc.algo, states, ["walk forward"], bc.instructions)
    assert actions.shape == (5, 8) and np.all(np.abs(actions) <= 1.0)


def test_policy_average_is_the_mean_then_a_moving_average():
    layer = torch.nn.Linear(1, 1, bias=False)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    layer.register_parameter("frozen", frozen)
    average = PolicyAverage(layer, decay=0.5)  # a plain mean for 1 / (1 - 0.5) = 2 updates, then weight 0.5
    seen = []
    for value in (2.0, 4.0, 8.0):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        with average.swapped_in():
            seen.append(layer.weight.item())
        assert layer.weight.item() == value  # the trained weights come back
    assert seen == [2.0, 3.0, 5.5] and frozen.item() == 1.0
    average.apply()
    assert layer.weight.item() == 5.5


def test_trained_policy_is_the_average_of_its_updates(tiny_dir):
    """The average changes what the run ends with, never how it trains; 0 keeps the last update's weights."""
    table = episode_table(n_episodes=6, steps=12)
    runs = {}
    for ema in (0.0, 0.9):
        seen = []
        config = tiny_config(tiny_dir, algorithm="bc", n_steps=20, n_steps_per_epoch=10, actor_learning_rate=3e-3,
                             policy_ema=ema)
        result = train(table, config, progress=False,
                       on_epoch=lambda step, algo: seen.append(torch.cat([p.detach().flatten().clone() for p in
                                                                           policy_module(algo).parameters()])))
        final = torch.cat([p.detach().flatten() for p in policy_module(result.algo).parameters()])
        runs[ema] = (result.curve["loss"].to_list(), seen, final)
    assert runs[0.0][0] == runs[0.9][0]  # the same updates
    assert torch.equal(runs[0.9][1][-1], runs[0.9][2])  # what on_epoch scored last is what the run returns
    assert not torch.equal(runs[0.9][2], runs[0.0][2])
    with pytest.raises(ValueError, match=r"policy_ema=1.0 must be in \[0, 1\)"):
        train(table, tiny_config(tiny_dir, algorithm="bc", policy_ema=1.0), progress=False)


def test_mlp_baseline_trains_on_the_same_observations(tiny_dir):
    result = train(episode_table(n_episodes=4, steps=10), tiny_config(tiny_dir, algorithm="bc", encoder_type="mlp"),
                   progress=False)
    assert result.expert_usage == {} and np.isfinite(result.curve["loss"].to_numpy()).all()


def test_checkpoint_round_trip_reproduces_actions(tiny_dir, data_root):
    table = episode_table(n_episodes=6, steps=12)
    result = train(table, tiny_config(tiny_dir, algorithm="iql"), progress=False)
    lineage = {"name": "ant_skills", "version": "1.0.0", "content_hash": "ab" * 32, "sources": []}
    path = save_checkpoint(result, "ant_policy", dataset=lineage, recipe={"name": "ant_skills"},
                           metrics={"normalized_score": 12.5}, training_key="k1")
    assert path.parent == data_root / "checkpoints" / "ant_policy" and path.name.startswith("v1.0.0-")
    assert latest_checkpoint("ant_policy") == path and find_checkpoint("ant_policy", "k1") == path
    assert find_checkpoint("ant_policy", "other") is None
    # Same weights again: the immutable folder is reused, not rewritten.
    assert save_checkpoint(result, "ant_policy", training_key="k1") == path
    assert list_checkpoints("ant_policy") == [path]

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dataset"] == lineage and manifest["version"] == "1.0.0"
    assert manifest["algorithm"] == "iql" and manifest["metrics"]["normalized_score"] == 12.5
    assert manifest["observation"]["instructions"] == INSTRUCTIONS and manifest["observation"]["state_dim"] == 27
    assert manifest["observation"]["action_bounds"] == [-1.0, 1.0]
    assert len(manifest["training"]["learning_curve"]) == 2 and manifest["backbone"]["sha256"]
    record = json.loads((path / "version.json").read_text())  # the store's record
    assert record["training_key"] == "k1" and set(record["files"]) >= {"model.d3", "manifest.json"}

    loaded = load_checkpoint(path)
    rng = np.random.default_rng(3)
    states = rng.normal(size=(32, 27)).astype(np.float32)
    texts = [INSTRUCTIONS[i] for i in rng.integers(0, 3, 32)]
    np.testing.assert_array_equal(loaded.act(states, texts), policy_actions(result.algo, states, texts, INSTRUCTIONS))
    controller = loaded.policy("turn right")  # the closed-loop form sim rollouts call
    np.testing.assert_array_equal(controller(states[0]), loaded.act(states[:1], ["turn right"])[0])

    saved = load_adapters(path)
    live = adapter_state_dict(result.algo)
    assert saved.keys() == live.keys() and any(".experts." in k for k in saved)
    assert all(torch.equal(saved[k], live[k]) for k in saved)

    # Other weights: the next version.
    other = train(table, tiny_config(tiny_dir, algorithm="iql", seed=1), progress=False)
    second = save_checkpoint(other, "ant_policy", training_key="k2")
    assert second.name.startswith("v1.1.0-") and list_checkpoints("ant_policy") == [path, second]
    assert latest_checkpoint("ant_policy") == second and find_checkpoint("ant_policy", "k1") == path

    # A changed pickle is never loaded.
    with open(path / "model.d3", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="will not be unpickled"):
        load_checkpoint(path)


@pytest.mark.parametrize("encoder_type", ["lora_moe", "lora"])
def test_critic_encoder_mlp_keeps_the_transformer_in_the_policy_only(tiny_dir, data_root, encoder_type):
    from d3rlpy.models.torch import VectorEncoder, VectorEncoderWithAction

    from training.critic_encoder import CriticMLPEncoder, CriticMLPEncoderWithAction
    from training.lora_moe import LoRAMoEEncoder, moe_bodies

    table = episode_table(n_episodes=6, steps=12)
    result = train(table, tiny_config(tiny_dir, algorithm="iql", encoder_type=encoder_type, critic_encoder="mlp"),
                   progress=False)
    modules = result.algo.impl.modules
    assert isinstance(modules.policy._encoder, LoRAMoEEncoder)
    critics = [*modules.q_funcs, *modules.targ_q_funcs]
    assert len(critics) == 4 and all(isinstance(q._encoder, CriticMLPEncoderWithAction) for q in critics)
    assert all(isinstance(q._encoder.mlp, VectorEncoderWithAction) for q in critics)
    assert isinstance(modules.value_func._encoder, CriticMLPEncoder)
    assert isinstance(modules.value_func._encoder.mlp, VectorEncoder)
    assert list(moe_bodies(result.algo)) == ["policy._encoder.body"]  # one transformer, the policy's
    # The critic reads the instruction as a one-hot and the normalised state.
    features = modules.value_func._encoder.features
    obs = torch.tensor([[0.0] * 27 + [2.0], [0.0] * 27 + [7.0]])
    assert features(obs)[:, 27:].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]
    assert np.isfinite(result.curve["critic_loss"].to_numpy()).all()
    n_experts = 4 if encoder_type == "lora_moe" else 1
    assert sum(result.expert_usage["policy._encoder.body"][0]) == 10 * 16 * min(2, n_experts)

    path = save_checkpoint(result, "critic_mlp_policy", training_key="k")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["train_config"]["critic_encoder"] == "mlp"
    assert manifest["d3rlpy_config"]["critic_encoder_factory"]["type"] == "critic_mlp"
    loaded = load_checkpoint(path)
    rng = np.random.default_rng(5)
    states = rng.normal(size=(16, 27)).astype(np.float32)
    texts = [INSTRUCTIONS[i] for i in rng.integers(0, 3, 16)]
    np.testing.assert_array_equal(loaded.act(states, texts), policy_actions(result.algo, states, texts, INSTRUCTIONS))
    obs = torch.from_numpy(np.concatenate([states, rng.integers(0, 3, (16, 1))], 1).astype(np.float32))
    loaded_v = loaded.algo.impl.modules.value_func(obs)
    assert torch.equal(loaded_v, modules.value_func(obs))  # the critics' weights and statistics round-trip too


def test_unknown_critic_encoder_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="critic_encoder 'transformer' is unknown"):
        train(episode_table(n_episodes=4, steps=10), tiny_config(tiny_dir, critic_encoder="transformer"),
              progress=False)


def test_non_unit_action_bounds_are_learnt_and_enforced(tiny_dir):
    """A robot whose actions span [-3, 3]: its episodes are not rejected, and the policy acts beyond +-1."""
    bounds = (-3.0, 3.0)
    table = episode_table(n_episodes=6, steps=12).with_columns(
        pl.col(ACTION).list.eval(pl.element() * 2.9).alias(ACTION)  # the linear controller's actions, scaled
    )
    with pytest.raises(ValueError, match="action_bounds is not set"):
        train(table, tiny_config(tiny_dir, action_bounds=None), progress=False)
    with pytest.raises(ValueError, match="low < high"):
        split_trainable(table, "reward", INSTRUCTIONS, (1.0, -1.0))
    _, rejected = split_trainable(table, "reward", INSTRUCTIONS, UNIT)
    assert rejected["check"].unique().to_list() == ["action_range"]
    assert "outside the robot's action bounds [-1.0, 1.0]" in rejected["reason"][0]

    result = train(table, tiny_config(tiny_dir, algorithm="bc", n_steps=60, n_steps_per_epoch=20,
                                      actor_learning_rate=3e-3, action_bounds=bounds), progress=False)
    assert result.rejected.is_empty() and result.n_episodes == 6
    states = np.stack(table[STATE].to_list())
    actions = policy_actions(result.algo, states, table["language_instruction"].to_list(), result.instructions)
    assert np.all(np.abs(actions) <= 3.0 + 1e-5)
    assert np.abs(actions).max() > 1.2  # a [-1, 1] actor could never output these

    path = save_checkpoint(result, "wide")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["observation"]["action_bounds"] == [-3.0, 3.0]
    np.testing.assert_allclose(load_checkpoint(path).act(states[:8], ["walk forward"]),
                               policy_actions(result.algo, states[:8], ["walk forward"], result.instructions))


def test_manifest_names_the_dataset_version_and_its_source_files(tmp_path, tiny_dir):
    """Publish a dataset, train on its train split, and read the lineage back from the checkpoint."""
    recipe = load_recipe(write_recipe(tmp_path))
    published = do_publish(recipe, make_episodes(6, 25))
    record = resolve_version("mini", "latest")
    lineage = dataset_lineage(record)
    assert (lineage["name"], lineage["version"], lineage["content_hash"]) == ("mini", "1.0.0", published.content_hash)
    by_file = {s["source_file"]: s for s in lineage["sources"]}
    assert set(by_file) == {"fleet_a.mcap", "fleet_b.mcap", "broken.mcap"}
    assert by_file["fleet_a.mcap"]["source"] == "ant_fleet_ros2" and by_file["fleet_a.mcap"]["source_sha256"] == "a" * 64
    assert by_file["broken.mcap"]["episodes"] == 0  # a file that gave no episode is still named
    assert sum(s["steps"] for s in lineage["sources"]) == 150

    table = pl.read_parquet(Path(record["path"]) / "data" / "train-*.parquet")
    result = train(table, tiny_config(tiny_dir, algorithm="bc"), progress=False)
    path = save_checkpoint(result, "mini-baseline", dataset=lineage)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["dataset"] == lineage
    assert json.loads((path / "version.json").read_text())["dataset"] == {
        "name": "mini", "version": "1.0.0", "content_hash": published.content_hash}


def test_presets_size_the_run():
    cpu, gpu = TrainConfig(), TrainConfig.from_preset("gpu", algorithm="bc")
    assert TrainConfig.from_preset("cpu") == cpu and cpu.n_epochs == 10 and cpu.n_steps >= 5000
    assert (cpu.encoder.n_layers, cpu.encoder.n_state_tokens, cpu.device) == (1, 1, "cpu:0")
    assert (gpu.encoder.n_layers, gpu.encoder.n_state_tokens, gpu.batch_size, gpu.algorithm) == (0, 4, 256, "bc")
    with pytest.raises(ValueError, match="preset 'tpu' is unknown"):
        TrainConfig.from_preset("tpu")


def test_single_lora_has_the_mixtures_parameter_count(tiny_dir):
    from training.offline_rl import make_encoder_factory

    table = episode_table(n_episodes=4, steps=12)
    moe = make_encoder_factory(tiny_config(tiny_dir), INSTRUCTIONS, table)
    lora = make_encoder_factory(tiny_config(tiny_dir, encoder_type="lora"), INSTRUCTIONS, table)
    assert (lora.n_experts, lora.top_k, lora.rank) == (1, 1, moe.rank * moe.n_experts)

    def adapter_params(f):
        dim = len(table[STATE][0]) + 1
        return sum(p.numel() for n, p in f.create((dim,)).named_parameters() if ".experts." in n)

    assert adapter_params(lora) == adapter_params(moe)


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_rollouts():
    from training.evaluation import bootstrap_ci, per_skill

    rng = np.random.default_rng(0)
    rows = []
    for policy, centre in (("policy", 60.0), ("baseline", 30.0)):
        for instruction in ("a", "b"):
            for seed in range(40):
                rows.append({"policy": policy, "instruction": instruction, "seed": seed, "progress": 0.0,
                             "fell": False, "normalized_score": centre + rng.normal(0, 20)})
    table = per_skill(pl.DataFrame(rows))
    assert set(table["instruction"]) == {"a", "b", "all skills"}
    assert (table["ci95_low"] < table["normalized_score"]).all()
    assert (table["normalized_score"] < table["ci95_high"]).all()
    overall = {r["policy"]: r for r in table.filter(pl.col("instruction") == "all skills").iter_rows(named=True)}
    assert overall["baseline"]["ci95_high"] < overall["policy"]["ci95_low"]
    # The same rollouts in another row order give the same intervals, to the bit.
    shuffled = per_skill(pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=3))
    assert shuffled.select("ci95_low", "ci95_high").equals(table.select("ci95_low", "ci95_high"))
    few = bootstrap_ci([rng.normal(0, 20, 5)])
    many = bootstrap_ci([rng.normal(0, 20, 80)])
    assert many[1] - many[0] < few[1] - few[0]


def test_paired_differences_see_a_gap_that_per_policy_intervals_miss():
    from training.evaluation import paired_differences, per_skill

    # Both policies share each seed's luck (sd 20); "policy" is 5 points better on every seed, "twin" the same as
    # "baseline" but for a little noise of its own. Paraphrase rollouts are left out of the comparison.
    rng = np.random.default_rng(1)
    rows = []
    for instruction in ("a", "b"):
        for seed in range(20):
            luck = rng.normal(50, 20)
            for policy, score in (("baseline", luck), ("policy", luck + 5 + rng.normal(0, 1)),
                                  ("twin", luck + rng.normal(0, 1))):
                rows.append({"policy": policy, "instruction": instruction, "seed": seed, "progress": 0.0,
                             "fell": False, "normalized_score": score, "phrasing": "declared"})
    rows.append({**rows[0], "instruction": "a paraphrase", "phrasing": "paraphrase", "normalized_score": 1e6})
    rollouts = pl.DataFrame(rows)
    overall = {r["policy"]: r for r in per_skill(rollouts).filter(pl.col("instruction") == "all skills").iter_rows(named=True)}
    assert overall["baseline"]["ci95_high"] > overall["policy"]["ci95_low"]  # the per-policy intervals overlap
    paired = {(r["better"], r["worse"]): r for r in paired_differences(rollouts).iter_rows(named=True)}
    gap = paired[("policy", "baseline")]
    assert 4.0 < gap["ci95_low"] < gap["difference"] < gap["ci95_high"] < 6.0 and gap["separated"]
    assert gap["rollouts"] == 40
    again = paired_differences(rollouts.sample(fraction=1.0, shuffle=True, seed=3))
    assert again.sort("better", "worse").equals(paired_differences(rollouts).sort("better", "worse"))
    [(better, worse)] = [k for k in paired if set(k) == {"baseline", "twin"}]
    assert not paired[(better, worse)]["separated"] and paired[(better, worse)]["difference"] < 1.0


def test_score_plot_draws_a_one_seed_interval_whose_rounding_crosses_its_mean():
    from training.evaluation import scores_png

    # One seed: the bootstrap interval is the mean itself, give or take the last bit of a float.
    table = pl.DataFrame({"policy": ["baseline", "policy"], "instruction": ["all skills", "all skills"],
                          "normalized_score": [10.0, 50.0], "ci95_low": [10.0, 50.0 + 1e-12],
                          "ci95_high": [10.0 - 1e-12, 50.0]})
    png = scores_png(table)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
