"""Group `train`: per training target (datasets/targets/<name>.yaml), a policy, a baseline and their evaluation.

For each target the assets ["policy", name] and ["baseline", name] train checkpoints
"<name>-policy" and "<name>-baseline" on the newest version of their datasets, and
["evaluation", name] rolls both out in the target's simulator. Job `train_<name>`
materializes the three; sensor `retrain_<name>` runs it when the policy's dataset
publishes a new version. Nothing here names a target: they are all generated from YAML.

Expensive work is keyed by content: a checkpoint is trained only when no version of it
was trained on the same dataset content with the same configuration, and an evaluation
only when its checkpoints or rollout settings changed.
"""

import hashlib
import json
import logging
from functools import cache
from pathlib import Path
from typing import Any, Optional

import dagster as dg
import polars as pl
import yaml

from foundations import storage
from foundations.catalog import config_path
from foundations.publish import resolve_version
from foundations.targets import Learner, Target, list_targets, load_target
from pipelines.metadata import md_table, png_metadata
from pipelines.resources import DataRoot

ROLES = ("policy", "baseline")  # each a checkpoint "<target>-<role>"
GROUP = "train"
TRAINING_POOL = "training"  # dagster.yaml limits every pool to one at a time: trainings never share a machine
RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)
EVALUATION_TABLE = "evaluation"  # lake table, one partition per target


class TrainingConfig(dg.Config):
    """Run-time overrides of a target's training (None: the target's YAML, then the preset's)."""

    dataset: Optional[str] = None  # train on another published dataset (e.g. a small test fleet's)
    n_steps: Optional[int] = None
    n_steps_per_epoch: Optional[int] = None  # d3rlpy trains n_steps // this many epochs
    # One torch thread: on a 2-core machine shared with anything else, two threads wait on each
    # other (4-7x slower IQL updates measured in benchmarks/train_benchmark.py). None: torch's default.
    num_threads: Optional[int] = 1


class EvaluationConfig(dg.Config):
    """Run-time overrides of a target's rollouts (None: the target's YAML)."""

    seeds: Optional[list[int]] = None
    steps: Optional[int] = None


def checkpoint_name(target: str, role: str) -> str:
    return f"{target}-{role}"


def asset_key(kind: str, target: str) -> dg.AssetKey:
    """["policy" | "baseline" | "evaluation", target]."""
    return dg.AssetKey([kind, target])


def train_learner(context: dg.AssetExecutionContext, target: Target, learner: Learner, name: str,
                  config: TrainingConfig) -> tuple[Path, bool, dict, Any]:
    """Train (or reuse) checkpoint `name` of `learner` on the newest version of its dataset;
    returns (its folder, whether it was trained now, the dataset version record, the TrainConfig)."""
    from training.checkpoints import dataset_lineage, find_checkpoint, load_checkpoint, save_checkpoint
    from training.offline_rl import train

    dataset_name = config.dataset or learner.dataset
    dataset = resolve_version(dataset_name, "latest")
    train_config = learner_config(target, learner, config)
    key = hashlib.sha256(
        json.dumps([dataset["content_hash"], train_config.to_dict()], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]

    path = find_checkpoint(name, key)
    trained = path is None
    if path is not None:
        context.log.info(f"{name}: {path.name} was trained on {dataset_name} {dataset['version']} with this config")
    else:
        table = train_split(dataset)
        parent = _warm_start_parent(name, dataset_name, dataset, train_config, table)
        share = target.training.warm_start_share
        if parent is not None and share is not None:
            n_steps = max(train_config.n_steps_per_epoch, int(round(train_config.n_steps * share)))
            context.log.info(f"{name}: warm start from {parent['folder']} ({dataset_name} {parent['dataset_version']} "
                             f"-> {dataset['version']}, same config), {n_steps} of {train_config.n_steps} updates")
            result = train(table, train_config, init_from=load_checkpoint(parent.pop("path")).algo, n_steps=n_steps)
            parent["n_steps"] = n_steps
        else:
            result, parent = train(table, train_config), None
        recipe = yaml.safe_load(config_path("recipes", dataset_name).read_text(encoding="utf-8"))
        path = save_checkpoint(result, name, dataset=dataset_lineage(dataset), recipe=recipe, training_key=key,
                               parent=parent)
    return path, trained, dataset, train_config


def learner_config(target: Target, learner: Learner, config: TrainingConfig) -> Any:
    """The TrainConfig the pipeline trains `learner` of `target` with: the target's preset and seed, the robot's
    action bounds, the learner's algorithm, encoders and reward column, then the run's overrides."""
    from training.offline_rl import TrainConfig

    overrides = {"algorithm": learner.algorithm, "seed": target.training.seed, "num_threads": config.num_threads,
                 "action_bounds": tuple(target.profile.action_bounds), "encoder_type": learner.encoder}
    if learner.critic_encoder:
        overrides["critic_encoder"] = learner.critic_encoder
    if learner.reward_column:
        overrides["reward_column"] = learner.reward_column
    if target.training.policy_ema is not None:
        overrides["policy_ema"] = target.training.policy_ema
    for field in ("n_steps", "n_steps_per_epoch"):
        value = getattr(config, field) or getattr(target.training, field)
        if value is not None:
            overrides[field] = value
    return TrainConfig.from_preset(target.training.preset, **overrides)


def train_split(dataset: dict) -> pl.DataFrame:
    """The train split of a published dataset version (a `resolve_version` record)."""
    return pl.read_parquet(Path(dataset["path"]) / "data" / "train-*.parquet")


def _warm_start_parent(name: str, dataset_name: str, dataset: dict, train_config: Any,
                       table: pl.DataFrame) -> Optional[dict]:
    """The latest version of checkpoint `name` when a new one may start from it: trained on an older
    version of the same recipe, with the same config and the same instruction vocabulary."""
    from training.checkpoints import latest_checkpoint

    path = latest_checkpoint(name)
    if path is None:
        return None
    manifest = _manifest(path)
    same_config = (json.dumps(manifest.get("train_config"), sort_keys=True, default=str)
                   == json.dumps(train_config.to_dict(), sort_keys=True, default=str))
    lineage = manifest.get("dataset") or {}
    instructions = sorted(table["language_instruction"].drop_nulls().unique().to_list())
    reasons = [why for ok, why in (
        (same_config, "its config differs"),
        (lineage.get("name") == dataset_name, f"it was trained on {lineage.get('name')}"),
        (lineage.get("content_hash") != dataset["content_hash"], "its dataset is the same"),
        (manifest["observation"]["instructions"] == instructions,
         f"its instructions {manifest['observation']['instructions']} differ from {instructions}"),
    ) if not ok]
    if reasons:
        logging.getLogger(__name__).info("%s: no warm start from %s: %s", name, path.name, "; ".join(reasons))
        return None
    return {"name": name, "version": manifest["version"], "folder": manifest["folder"], "path": path,
            "dataset_version": lineage.get("version")}


def train_checkpoint(context: dg.AssetExecutionContext, target: Target, role: str,
                     config: TrainingConfig) -> dg.MaterializeResult:
    """Train (or reuse) checkpoint `<target>-<role>` on the newest version of its dataset."""
    learner = getattr(target, role)
    name = checkpoint_name(target.name, role)
    path, trained, dataset, train_config = train_learner(context, target, learner, name, config)
    manifest = _manifest(path)
    training = manifest["training"]
    curve = pl.DataFrame(training["learning_curve"])
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "version": manifest["version"],
        "dataset": config.dataset or learner.dataset,
        "dataset_version": dataset["version"],
        "trained_now": trained,
        "warm_started_from": (manifest.get("parent") or {}).get("folder") or "none (from scratch)",
        "algorithm": manifest["algorithm"],
        "reward_column": learner.reward_column or "none (behaviour cloning)",
        "action_bounds": dg.MetadataValue.json(list(train_config.action_bounds)),
        "seconds": training["metrics"].get("seconds"),
        "seconds_per_update": training["metrics"].get("seconds_per_update"),
        "transitions": training["metrics"].get("n_transitions"),
        "source_files": len(manifest["dataset"]["sources"]),
        "expert_usage": dg.MetadataValue.json(training["expert_usage"]),
        "learning_curve": md_table(curve),
    }
    if curve.height:
        from training.evaluation import learning_curves_png

        metadata |= png_metadata(learning_curves_png({name: curve}), f"{name}_learning_curve")
    return dg.MaterializeResult(metadata=metadata)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def evaluate_target(context: dg.AssetExecutionContext, target: Target,
                    config: EvaluationConfig) -> dg.MaterializeResult:
    """Closed-loop normalized scores of both checkpoints (when the target names a simulator) and offline metrics."""
    from training.checkpoints import latest_checkpoint
    from training.evaluation import learning_curves_png, per_skill, scores_png

    paths = {role: latest_checkpoint(checkpoint_name(target.name, role)) for role in ROLES}
    missing = [checkpoint_name(target.name, r) for r, p in paths.items() if p is None]
    if missing:
        keys = [asset_key(r, target.name).to_user_string() for r in ROLES]
        raise dg.Failure(f"no checkpoint {missing}: materialize {keys} first", allow_retries=False)
    manifests = {role: _manifest(p) for role, p in paths.items()}
    offline = {
        role: {k: m["training"]["metrics"].get(k) for k in ("td_error", "initial_state_value", "loss")}
        for role, m in manifests.items()
    }
    curves = {role: pl.DataFrame(m["training"]["learning_curve"]) for role, m in manifests.items()}
    metadata = {
        "offline_metrics": dg.MetadataValue.json(offline),
        "checkpoints": dg.MetadataValue.json({r: str(p) for r, p in paths.items()}),
        **png_metadata(learning_curves_png(curves), f"{target.name}_learning_curves"),
    }
    simulator = target.evaluation.simulator
    if simulator is None:
        return dg.MaterializeResult(metadata={**metadata, "closed_loop": "none: the target names no simulator"})

    rollouts, not_evaluated = _rollouts(context, target, config, paths)
    table = per_skill(rollouts)
    storage.write_partition(table, EVALUATION_TABLE, target.name)
    overall = dict(table.filter(pl.col("instruction") == "all skills").select("policy", "normalized_score").iter_rows())
    return dg.MaterializeResult(
        metadata={
            **metadata,
            "simulator": simulator,
            "normalized_score_policy": overall.get("policy"),
            "normalized_score_baseline": overall.get("baseline"),
            "per_skill": md_table(table),
            **png_metadata(scores_png(table), f"{target.name}_scores"),
            "not_evaluated": dg.MetadataValue.json(not_evaluated),
        }
    )


def _rollouts(context: dg.AssetExecutionContext, target: Target, config: EvaluationConfig,
              paths: dict[str, Path], paraphrase: bool = True) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Rollouts of checkpoints {label: folder} on the same seeds (cached per checkpoints and
    settings), and per label the instructions not scored (no skill, or a text it cannot read)."""
    from simulator.embodiments import get_embodiment
    from training.checkpoints import load_checkpoint
    from training.evaluation import evaluable, evaluate_policy, paraphrase_skills, reference_scores

    embodiment = get_embodiment(target.evaluation.simulator)
    seeds = config.seeds or target.evaluation.seeds
    steps = config.steps or target.evaluation.steps or embodiment.episode_steps
    instructions = {role: list(_manifest(p)["observation"]["instructions"]) for role, p in paths.items()}
    paraphrases, unknown_skills = paraphrase_skills(embodiment, target.evaluation.paraphrases if paraphrase else {})
    if unknown_skills:
        context.log.warning(f"{target.name}: evaluation.paraphrases names skills {embodiment.name} lacks: "
                            f"{unknown_skills}; not scored")
    checkpoints = {role: load_checkpoint(p) for role, p in paths.items()}
    skills, asked, not_evaluated = {}, {}, {}
    for role, texts in instructions.items():
        skills[role], not_evaluated[role] = evaluable(embodiment, texts)
        asked[role] = {}
        for text, skill in paraphrases.items():
            try:  # a policy without a language model (MLP encoder) knows only its training instructions
                checkpoints[role].policy(text)
                asked[role][text] = skill
            except ValueError:
                not_evaluated[role].append(text)
        if not_evaluated[role]:
            context.log.warning(f"{target.name} {role}: not scored (no skill in {embodiment.name}, or a text "
                                f"this policy cannot read): {not_evaluated[role]}")
    key = hashlib.sha256(
        json.dumps([embodiment.name, [str(p) for p in paths.values()], seeds, steps, paraphrases]).encode()
    ).hexdigest()[:16]
    cached = storage.area("evaluations") / f"{key}.parquet"
    if cached.exists():
        context.log.info("these checkpoints were evaluated with these settings before; reusing the rollouts")
        return pl.read_parquet(cached), not_evaluated
    all_skills = {s for role in paths for m in (skills[role], asked[role]) for s in m.values()}
    refs = reference_scores(embodiment, sorted(all_skills), seeds, steps)
    frames = [
        evaluate_policy(embodiment, checkpoints[role].policy, mapping, seeds, steps, refs, label=role,
                        phrasing=phrasing)
        for role in paths
        for phrasing, mapping in (("declared", skills[role]), ("paraphrase", asked[role]))
        if mapping
    ]
    # Nothing the simulator can score: an empty table (and the not-evaluated list), not a failure.
    rollouts = pl.concat(frames) if frames else evaluate_policy(embodiment, next(iter(checkpoints.values())).policy,
                                                                {}, seeds, steps, refs)
    rollouts.write_parquet(cached)
    return rollouts, not_evaluated


def target_assets(target: Target) -> list[dg.AssetsDefinition]:
    """The policy, baseline and evaluation assets of one target; ValueError when its simulator does not exist."""
    from simulator.embodiments import EMBODIMENTS

    simulator = target.evaluation.simulator
    if simulator is not None and simulator not in EMBODIMENTS:
        raise ValueError(f"{target.path}: key 'evaluation.simulator': no simulated embodiment {simulator!r} "
                         f"(known: {', '.join(EMBODIMENTS)}); omit it for offline metrics only")
    assets = []
    for role in ROLES:
        learner = getattr(target, role)
        assets.append(_checkpoint_asset(target, role, learner.dataset, learner.algorithm))

    @dg.asset(
        key=asset_key("evaluation", target.name),
        group_name=GROUP,
        deps=[asset_key(role, target.name) for role in ROLES],
        pool=TRAINING_POOL,  # rollouts load the CPU as training does
        retry_policy=RETRY,
        description=f"Closed-loop rollouts of {target.name}'s policy and baseline in simulator "
        f"{target.evaluation.simulator or '(none)'} for every skill, as normalized scores (0 = random operator, "
        f"100 = expert operator) with 95 % bootstrap intervals over the same seeds for every policy and reference "
        f"operator, beside offline metrics and learning curves. Target: {_where(target)}.",
        kinds={"mujoco"},
        tags={"target": target.name},
    )
    def _evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig,
                    data_root: DataRoot) -> dg.MaterializeResult:  # data_root: roots every storage call
        return evaluate_target(context, target, config)

    return [*assets, _evaluation]


def _checkpoint_asset(target: Target, role: str, dataset: str, algorithm: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=asset_key(role, target.name),
        group_name=GROUP,
        deps=[dg.AssetKey(["hub", dataset])],
        pool=TRAINING_POOL,
        retry_policy=RETRY,
        description=f"{algorithm.upper()} with the LoRA mixture-of-experts MiniLM encoder on the newest version of "
        f"{dataset} ({role} of target {target.name}: {_where(target)}). Checkpoint "
        f"{checkpoint_name(target.name, role)}: immutable, versioned; retrained only when data or config change.",
        kinds={"pytorch", "d3rlpy"},
        tags={"target": target.name},
    )
    def _checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig,
                    data_root: DataRoot) -> dg.MaterializeResult:  # data_root: roots every storage call
        return train_checkpoint(context, target, role, config)

    return _checkpoint


ABLATION_TABLE = "ablation"  # lake table, one partition per target
ABLATION_PAIRED_TABLE = "ablation_paired"  # every pair of variants, rollout by rollout (same partitions)
ABLATION_GROUP = "ablation"  # outside curate_job: run on demand (job ablate_<target>, the UI, the benchmark)


class AblationConfig(TrainingConfig):
    """Run-time overrides of an ablation's training (as TrainingConfig) and rollouts (as EvaluationConfig)."""

    seeds: Optional[list[int]] = None
    steps: Optional[int] = None
    variants: Optional[list[str]] = None  # train and score only these variants of the target's ablation


def ablate_target(context: dg.AssetExecutionContext, target: Target, config: AblationConfig) -> dg.MaterializeResult:
    """Train (or reuse) every variant of `target.ablation` and score them on the same seeds."""
    from training.evaluation import paired_differences, per_skill, scores_png

    chosen = dict(target.ablation)
    if config.variants is not None:
        unknown = sorted(set(config.variants) - set(chosen))
        if unknown or not config.variants:
            raise dg.Failure(f"ablation variants {unknown or '[]'} are not in {_where(target)} (known: {', '.join(chosen)})",
                             allow_retries=False)
        chosen = {v: chosen[v] for v in config.variants}
    paths, rows = {}, []
    for variant, learner in chosen.items():
        path, trained, dataset, train_config = train_learner(
            context, target, learner, f"{target.name}-ablation-{variant}", config)
        paths[variant] = path
        rows.append({"variant": variant, "dataset": f"{config.dataset or learner.dataset} {dataset['version']}",
                     "algorithm": learner.algorithm, "reward": learner.reward_column or "-",
                     "encoder": learner.encoder, "critics": "-" if learner.algorithm == "bc" or learner.encoder == "mlp" else train_config.critic_encoder, "updates": train_config.n_steps,
                     "trained_now": trained,
                     "checkpoint": str(path)})
    variants = pl.DataFrame(rows)
    metadata = {"variants": md_table(variants.drop("checkpoint"))}
    if target.evaluation.simulator is None:
        return dg.MaterializeResult(metadata={**metadata, "closed_loop": "none: the target names no simulator"})
    evaluation = EvaluationConfig(seeds=config.seeds, steps=config.steps)
    rollouts, not_evaluated = _rollouts(context, target, evaluation, paths, paraphrase=False)
    table = per_skill(rollouts)
    storage.write_partition(table, ABLATION_TABLE, target.name)
    paired = paired_differences(rollouts)
    storage.write_partition(paired, ABLATION_PAIRED_TABLE, target.name)
    overall = (table.filter(pl.col("instruction") == "all skills")
               .select(pl.col("policy").alias("variant"), "normalized_score", "ci95_low", "ci95_high", "episodes"))
    summary = variants.join(overall, on="variant", how="left").drop("checkpoint")
    return dg.MaterializeResult(metadata={
        **metadata,
        "summary": md_table(summary),
        "per_skill": md_table(table),
        "paired": md_table(paired),
        **png_metadata(scores_png(table), f"{target.name}_ablation_scores"),
        "not_evaluated": dg.MetadataValue.json(not_evaluated),
    })


def ablation_asset(target: Target) -> dg.AssetsDefinition:
    datasets = sorted({learner.dataset for learner in target.ablation.values()})

    @dg.asset(
        key=asset_key("ablation", target.name),
        group_name=ABLATION_GROUP,
        deps=[dg.AssetKey(["hub", d]) for d in datasets],
        pool=TRAINING_POOL,
        retry_policy=RETRY,
        description=f"Ablation of target {target.name}: variants {', '.join(target.ablation)} "
        f"({_where(target)}, key ablation), each a checkpoint <target>-ablation-<variant>, scored on the same seeds "
        "with 95 % bootstrap intervals, and every pair of variants compared rollout by rollout (metadata `paired`).",
        kinds={"pytorch", "d3rlpy"},
        tags={"target": target.name},
    )
    def _ablation(context: dg.AssetExecutionContext, config: AblationConfig,
                  data_root: DataRoot) -> dg.MaterializeResult:  # data_root: roots every storage call
        return ablate_target(context, target, config)

    return _ablation


@cache
def ablation_job(name: str):
    """Job `ablate_<name>`: a target's ablation variants, trained and scored."""
    return dg.define_asset_job(f"ablate_{name}", selection=dg.AssetSelection.assets(asset_key("ablation", name)),
                               description=f"Train and score every ablation variant of target {name}.",
                               tags={"target": name})


def _where(target: Target) -> str:
    return f"datasets/targets/{target.name}.yaml"


@cache
def target_job(name: str):
    """Job `train_<name>`: a target's policy, baseline and evaluation (one object per name, shared by its sensor)."""
    return dg.define_asset_job(
        f"train_{name}",
        selection=dg.AssetSelection.assets(*[asset_key(kind, name) for kind in (*ROLES, "evaluation")]),
        description=f"Train target {name}'s policy and baseline on the newest dataset versions, then evaluate them.",
        tags={"target": name},
    )


def target_sensor(target: Target) -> dg.SensorDefinition:
    """Sensor `retrain_<name>`: runs `train_<name>` when the policy's dataset publishes a new version."""
    dataset = target.policy.dataset

    @dg.asset_sensor(
        name=f"retrain_{target.name}",
        asset_key=dg.AssetKey(["hub", dataset]),
        job=target_job(target.name),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Retrains target {target.name} when {dataset} gets a new version (not when nothing changed).",
    )
    def _retrain(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        meta = asset_event.asset_materialization.metadata
        if not meta.get("new_version") or not meta["new_version"].value:
            return dg.SkipReason(f"{dataset} was materialized without a new version")
        version = meta["version"].value
        return dg.RunRequest(
            run_key=f"{target.name}:{dataset}:{version}",
            tags={"target": target.name, "dataset": dataset, "dataset_version": str(version)},
        )

    return _retrain


def _targets() -> list[Target]:
    return [load_target(name) for name in list_targets()]


def training_assets() -> list[dg.AssetsDefinition]:
    """Every target's policy, baseline and evaluation assets, and its ablation where it declares one."""
    targets = _targets()
    return [asset for target in targets for asset in target_assets(target)] + [
        ablation_asset(target) for target in targets if target.ablation]


def training_jobs() -> list:
    """Every target's job `train_<name>`, and `ablate_<name>` where it declares an ablation."""
    targets = _targets()
    return [target_job(t.name) for t in targets] + [ablation_job(t.name) for t in targets if t.ablation]


def training_sensors() -> list[dg.SensorDefinition]:
    """Every target's sensor `retrain_<name>`."""
    return [target_sensor(target) for target in _targets()]
