"""Training targets declared in YAML (foundations.targets) and the assets, jobs and sensors generated from them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from foundations.targets import TargetError, list_targets, load_target
from pipelines.resources import DataRoot
from test_publish import do_publish, make_episodes, write_recipe

REPO_DATASETS = Path(__file__).resolve().parents[1] / "datasets"
RESOURCES = {"data_root": DataRoot()}


def write_target(catalog: Path, stem: str, **overrides) -> Path:
    raw = {
        "name": stem,
        "description": f"Test target {stem}.",
        "robot": "wide",
        "policy": {"dataset": "mini_curated", "algorithm": "iql", "reward_column": "combined_reward"},
        "baseline": {"dataset": "mini_all", "algorithm": "bc"},
    }
    raw.update(overrides)
    path = catalog / "targets" / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def catalog(tmp_path, monkeypatch) -> Path:
    """A catalog folder of our own: the repo's sources and robots, a wide-action robot, two recipes, two targets."""
    root = tmp_path / "catalog"
    shutil.copytree(REPO_DATASETS / "sources", root / "sources")
    shutil.copytree(REPO_DATASETS / "robots", root / "robots")
    (root / "targets").mkdir()
    profile = yaml.safe_load((REPO_DATASETS / "robots" / "ant.yaml").read_text())
    profile.update(name="wide", action_bounds=[-3.0, 3.0])
    (root / "robots" / "wide.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    for name in ("mini_curated", "mini_all"):
        write_recipe(root, name)
    write_target(root, "alpha")
    write_target(root, "beta", robot="ant", policy={"dataset": "mini_all", "algorithm": "iql", "reward_column": "reward"},
                 training={"seed": 3, "policy_ema": 0.5}, evaluation={"simulator": "ant", "seeds": [1000], "steps": 10,
                                                   "paraphrases": {"walk forward": ["go forwards"],
                                                                   "moonwalk": ["glide backwards"]}},
                 ablation={"bc_mlp": {"dataset": "mini_all", "algorithm": "bc", "encoder": "mlp"},
                           "iql_lora": {"dataset": "mini_all", "algorithm": "iql", "reward_column": "reward",
                                        "encoder": "lora"},
                           "iql_critics_same": {"dataset": "mini_all", "algorithm": "iql", "reward_column": "reward",
                                                "critic_encoder": "same"}})
    monkeypatch.setenv("ROBOCURATE_RECIPES", str(root))
    return root


def test_targets_load_with_defaults(catalog):
    assert list_targets() == ["alpha", "beta"]
    alpha = load_target("alpha")
    assert alpha.path == catalog / "targets" / "alpha.yaml"
    assert (alpha.policy.dataset, alpha.policy.algorithm, alpha.baseline.reward_column) == ("mini_curated", "iql", None)
    assert (alpha.training.preset, alpha.training.n_steps, alpha.training.seed) == ("cpu", None, 0)
    assert alpha.evaluation.simulator is None and alpha.evaluation.steps is None and len(alpha.evaluation.seeds) == 20
    assert alpha.profile.action_bounds == (-3.0, 3.0)
    assert alpha.datasets == ["mini_curated", "mini_all"]
    beta = load_target(catalog / "targets" / "beta.yaml")
    assert beta.evaluation.simulator == "ant" and beta.datasets == ["mini_all"] and beta.training.seed == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"polcy": {}}, "key 'polcy': unknown key"),
        ({"policy": {"dataset": "nowhere", "algorithm": "iql", "reward_column": "reward"}},
         "key 'policy.dataset': no recipe 'nowhere' in the catalog (known: mini_all, mini_curated)"),
        ({"baseline": {"dataset": "mini_all", "algorithm": "sgd"}}, "key 'baseline.algorithm'"),
        ({"policy": {"dataset": "mini_all", "algorithm": "iql"}}, "key 'policy': algorithm iql learns from rewards"),
        ({"robot": "hexapod"}, "key 'robot': no robot 'hexapod'"),
        ({"name": "other"}, "key 'name': 'other' but the file is bad.yaml"),
        ({"evaluation": {"seeds": []}}, "key 'evaluation.seeds'"),
        ({"training": {"n_steps": 0}}, "key 'training.n_steps'"),
        ({"training": {"policy_ema": 1.0}}, "key 'training.policy_ema'"),
    ],
)
def test_bad_targets_name_the_file_and_key(catalog, overrides, message):
    path = write_target(catalog, "bad", **overrides)
    with pytest.raises(TargetError) as err:
        load_target("bad")
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_and_unreadable_targets(catalog):
    with pytest.raises(TargetError, match="no target 'gamma'.*known: alpha, beta"):
        load_target("gamma")
    (catalog / "targets" / "broken.yaml").write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(TargetError, match="broken.yaml: not valid YAML"):
        load_target("broken")


def test_repo_targets_are_declared_for_every_embodiment():
    """The repo's own target files parse (dataset names are checked against the integrated catalog)."""
    from foundations.targets import Target

    for name in ("ant", "arm"):
        raw = yaml.safe_load((REPO_DATASETS / "targets" / f"{name}.yaml").read_text())
        target = Target.model_validate(raw)
        assert target.name == name and target.evaluation.simulator == name and target.robot == name
        assert target.baseline.algorithm == "bc" and target.policy.dataset.endswith("_curated")


def test_generated_assets_jobs_and_sensors(catalog):
    from pipelines.assets.train import training_assets, training_jobs, training_sensors

    assets = training_assets()
    keys = {key.to_user_string() for a in assets for key in a.keys}
    assert keys == {f"{kind}/{name}" for kind in ("policy", "baseline", "evaluation") for name in ("alpha", "beta")} | {
        "ablation/beta"}  # only beta declares an ablation
    by_key = {a.key.to_user_string(): a for a in assets}
    assert by_key["policy/alpha"].asset_deps[dg.AssetKey(["policy", "alpha"])] == {dg.AssetKey(["hub", "mini_curated"])}
    assert by_key["baseline/alpha"].asset_deps[dg.AssetKey(["baseline", "alpha"])] == {dg.AssetKey(["hub", "mini_all"])}
    assert by_key["evaluation/beta"].asset_deps[dg.AssetKey(["evaluation", "beta"])] == {
        dg.AssetKey(["policy", "beta"]), dg.AssetKey(["baseline", "beta"])}
    for asset in assets:
        assert asset.group_names_by_key[asset.key] == ("ablation" if asset.key.path[0] == "ablation" else "train")
        assert asset.op.pool == "training" and asset.op.retry_policy.max_retries == 2

    jobs, sensors = training_jobs(), training_sensors()
    assert [j.name for j in jobs] == ["train_alpha", "train_beta", "ablate_beta"]
    assert [(s.name, s.job_name) for s in sensors] == [("retrain_alpha", "train_alpha"), ("retrain_beta", "train_beta")]
    defs = dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, resources={"data_root": DataRoot()})
    job = defs.resolve_job_def("train_beta")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "policy/beta", "baseline/beta", "evaluation/beta"}

    write_target(catalog, "gamma", evaluation={"simulator": "submarine"})
    with pytest.raises(ValueError, match="gamma.yaml: key 'evaluation.simulator': no simulated embodiment 'submarine'"):
        training_assets()


def test_sensor_requests_a_run_per_new_dataset_version(catalog):
    from pipelines.assets.train import training_sensors

    sensor = {s.name: s for s in training_sensors()}["retrain_alpha"]
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey(["hub", "mini_curated"])

    def publish_event(version: str, new: bool) -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key=key, metadata={"version": version, "new_version": new}))

    publish_event("1.0.0", True)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    [request] = tick.run_requests
    assert request.run_key == "alpha:mini_curated:1.0.0"
    assert request.tags["dataset_version"] == "1.0.0" and request.tags["target"] == "alpha"
    assert sensor.job_name == "train_alpha"

    publish_event("1.0.0", False)  # materialized, nothing new published
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert tick.run_requests == [] and "without a new version" in tick.skip_message

    publish_event("1.1.0", True)
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert [r.run_key for r in tick.run_requests] == ["alpha:mini_curated:1.1.0"]
    # Another dataset's versions do not retrain this target.
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=dg.AssetKey(["hub", "mini_all"]), metadata={"version": "2.0.0", "new_version": True}))
    tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=tick.cursor))
    assert tick.run_requests == []


def test_target_trains_reuses_and_evaluates_in_its_simulator(catalog, tmp_path):
    """Target beta end to end on a published dataset: both checkpoints, lineage, reuse, closed-loop scores."""
    from foundations import storage
    from foundations.recipes import load_recipe
    from pipelines.assets.train import training_assets

    table = make_episodes(6, 25).with_columns(  # one instruction the simulated Ant has no skill for
        pl.when(pl.col("episode_id").str.contains("-00[345]$")).then(pl.lit("dance")).otherwise(
            pl.col("language_instruction")).alias("language_instruction"),
        (pl.col("step").cast(pl.Float32) / 25).alias("reward"),
    )
    published = do_publish(load_recipe(catalog / "mini_all.yaml"), table)
    assets = [a for a in training_assets() if a.key.path[1] == "beta" and a.key.path[0] != "ablation"]
    quick = {"n_steps": 10, "n_steps_per_epoch": 5}
    run_config = {"ops": {"policy__beta": {"config": quick}, "baseline__beta": {"config": quick}}}
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(assets, instance=instance, run_config=run_config, resources=RESOURCES)
    assert result.success

    from training.checkpoints import list_checkpoints

    [policy] = list_checkpoints("beta-policy")
    manifest = json.loads((policy / "manifest.json").read_text())
    assert manifest["dataset"]["name"] == "mini_all" and manifest["dataset"]["version"] == published.version
    assert {s["source_file"] for s in manifest["dataset"]["sources"]} == {"fleet_a.mcap", "fleet_b.mcap", "broken.mcap"}
    assert manifest["train_config"]["reward_column"] == "reward" and manifest["train_config"]["seed"] == 3
    assert manifest["train_config"]["policy_ema"] == 0.5  # the target's training.policy_ema
    assert manifest["observation"]["action_bounds"] == [-1.0, 1.0] and manifest["recipe"]["name"] == "mini_all"
    assert len(list_checkpoints("beta-baseline")) == 1

    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["policy/beta"]["trained_now"].value is True
    evaluation = meta["evaluation/beta"]
    assert evaluation["not_evaluated"].value == {"policy": ["dance"], "baseline": ["dance"]}
    scores = storage.read_partition("evaluation", "beta")
    assert set(scores["policy"]) == {"policy", "baseline"}
    trained_on = set(manifest["observation"]["instructions"])
    declared = scores.filter(pl.col("phrasing") == "declared")
    assert "dance" in trained_on and set(declared["instruction"]) == trained_on - {"dance"} | {"all skills"}
    # A paraphrase of a declared skill is asked as text and scored apart; one of a skill the
    # simulator lacks ("moonwalk") is reported, not a failure.
    reworded = scores.filter(pl.col("phrasing") == "paraphrase")
    assert set(reworded["instruction"]) == {"go forwards", "all paraphrases"}
    assert scores["normalized_score"].is_finite().all()
    assert (scores["ci95_low"] <= scores["normalized_score"]).all() and "beta_scores" in str(list(evaluation))

    # Same data, same config: nothing is trained again.
    again = dg.materialize(assets[:2], instance=instance, run_config=run_config, resources=RESOURCES)
    meta = {e.asset_key.to_user_string(): e.materialization.metadata for e in again.get_asset_materialization_events()}
    assert meta["policy/beta"]["trained_now"].value is False and meta["baseline/beta"]["trained_now"].value is False
    assert len(list_checkpoints("beta-policy")) == 1

    # The dataset grows, the config stays: the new version warm-starts from the previous one,
    # trains half the updates (training.warm_start_share) and names its parent.
    # (the same instructions as the trained version's: a new one changes the encoder's vocabulary)
    grown = make_episodes(9, 25).with_columns(
        pl.when(pl.col("episode_id").str.contains("-00[345]$")).then(pl.lit("dance")).otherwise(
            pl.lit("turn left")).alias("language_instruction"),
        (pl.col("step").cast(pl.Float32) / 25).alias("reward"),
    )
    do_publish(load_recipe(catalog / "mini_all.yaml"), grown)
    policy_only = {"ops": {"policy__beta": {"config": quick}}}
    assert dg.materialize(assets[:1], instance=instance, run_config=policy_only, resources=RESOURCES).success
    first, second = list_checkpoints("beta-policy")
    child = json.loads((second / "manifest.json").read_text())
    assert child["parent"]["folder"] == first.name and child["parent"]["n_steps"] == 5
    assert child["training"]["learning_curve"][-1]["step"] == 5 and manifest["parent"] is None


def test_ablation_variants_are_checkpoints_scored_on_the_same_seeds(catalog, data_root):
    """Target beta declares three ablation variants: one asset trains them as ordinary checkpoints
    and scores them side by side; curate_job leaves it out (it runs on demand)."""
    from foundations import storage
    from foundations.recipes import load_recipe
    from pipelines.assets.train import ABLATION_PAIRED_TABLE, ABLATION_TABLE, training_assets
    from pipelines.jobs import curate_job
    from training.checkpoints import list_checkpoints

    table = make_episodes(4, 25).with_columns((pl.col("step").cast(pl.Float32) / 25).alias("reward"))
    do_publish(load_recipe(catalog / "mini_all.yaml"), table)
    [asset] = [a for a in training_assets() if a.key.path == ["ablation", "beta"]]
    quick = {"n_steps": 4, "n_steps_per_epoch": 2, "seeds": [1000, 1001], "steps": 10}
    result = dg.materialize([asset], run_config={"ops": {"ablation__beta": {"config": quick}}}, resources=RESOURCES)
    assert result.success
    assert len(list_checkpoints("beta-ablation-bc_mlp")) == 1 and len(list_checkpoints("beta-ablation-iql_lora")) == 1
    # critic_encoder reaches training: the CPU preset keeps the transformer in the policy and gives the critics
    # d3rlpy's MLP; a learner's `critic_encoder: same` puts the transformer on the critics too.
    lora = json.loads((list_checkpoints("beta-ablation-iql_lora")[0] / "manifest.json").read_text())["d3rlpy_config"]
    assert lora["actor_encoder_factory"]["type"] == "lora_moe"
    assert lora["critic_encoder_factory"]["type"] == lora["value_encoder_factory"]["type"] == "critic_mlp"
    [same] = list_checkpoints("beta-ablation-iql_critics_same")
    d3 = json.loads((same / "manifest.json").read_text())["d3rlpy_config"]
    assert d3["critic_encoder_factory"]["type"] == d3["value_encoder_factory"]["type"] == "lora_moe"
    scores = storage.read_partition(ABLATION_TABLE, "beta")
    overall = scores.filter(pl.col("instruction") == "all skills")
    assert set(overall["policy"]) == {"bc_mlp", "iql_lora", "iql_critics_same"}
    assert set(scores.filter(pl.col("instruction") != "all skills")["episodes"]) == {2}  # the same two seeds each
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert "iql_lora" in meta["summary"].value and "lora" in meta["variants"].value
    paired = storage.read_partition(ABLATION_PAIRED_TABLE, "beta")  # every pair of the three, on the same rollouts
    per_policy = scores.filter((pl.col("instruction") != "all skills") & (pl.col("policy") == "bc_mlp"))["episodes"].sum()
    assert paired.height == 3 and (paired["difference"] >= 0).all() and set(paired["rollouts"]) == {per_policy}
    assert set(paired["better"]) | set(paired["worse"]) == set(overall["policy"]) and "better" in meta["paired"].value
    assert "ablation/beta" not in {k.to_user_string() for k in curate_job.selection.resolve(training_assets())}

    # `variants` trains and scores only those (here reusing the checkpoint); an unknown name fails, naming the known.
    only = dg.materialize([asset], run_config={"ops": {"ablation__beta": {"config": {**quick, "variants": ["iql_lora"]}}}},
                          resources=RESOURCES)  # fmt: skip
    assert set(storage.read_partition(ABLATION_TABLE, "beta")["policy"]) == {"iql_lora"}
    assert len(list_checkpoints("beta-ablation-iql_lora")) == 1 and only.success
    wrong = dg.materialize([asset], run_config={"ops": {"ablation__beta": {"config": {**quick, "variants": ["iql_x"]}}}},
                           resources=RESOURCES, raise_on_error=False)  # fmt: skip
    errors = [str(e.event_specific_data.error) for e in wrong.all_events if e.is_step_failure]
    assert not wrong.success and any("['iql_x']" in e and "known: bc_mlp, iql_lora" in e for e in errors)


def test_evaluation_without_a_simulator_reports_offline_metrics(catalog, tmp_path):
    """Target alpha names no simulator: its evaluation gives offline metrics only, and says so."""
    from pipelines.assets.train import training_assets
    from training.checkpoints import save_checkpoint
    from training.lora_moe import LoRAMoEEncoderFactory
    from training.offline_rl import TrainConfig, train
    from training_tables import episode_table, tiny_bert_dir

    [evaluation] = [a for a in training_assets() if a.key == dg.AssetKey(["evaluation", "alpha"])]
    instance = dg.DagsterInstance.ephemeral()
    missing = dg.materialize([evaluation], instance=instance, raise_on_error=False, resources=RESOURCES)  # not retried: nothing to wait for
    assert not missing.success
    [failure] = [e for e in missing.all_events if e.is_step_failure]
    assert "no checkpoint ['alpha-policy', 'alpha-baseline']" in str(failure.step_failure_data.error.message)

    encoder = LoRAMoEEncoderFactory(model_dir=tiny_bert_dir(tmp_path / "bert"), n_layers=1, feature_size=32)
    table = episode_table(n_episodes=4, steps=10)
    for role, algorithm in (("policy", "iql"), ("baseline", "bc")):
        config = TrainConfig(algorithm=algorithm, n_steps=4, n_steps_per_epoch=2, batch_size=8, eval_episodes=2,
                             encoder=encoder, num_threads=1, action_bounds=(-3.0, 3.0))
        save_checkpoint(train(table, config, progress=False), f"alpha-{role}")
    result = dg.materialize([evaluation], instance=instance, resources=RESOURCES)
    meta = result.get_asset_materialization_events()[0].materialization.metadata
    assert meta["closed_loop"].value == "none: the target names no simulator"
    offline = meta["offline_metrics"].value
    assert offline["policy"]["td_error"] is not None and offline["baseline"]["loss"] is not None
