"""Group `train`: offline-RL policies on the newest dataset version, and their closed-loop evaluation.

Expensive work is keyed by content: a checkpoint is trained only when no checkpoint of
the same name was trained on the same dataset content with the same configuration, and
an evaluation only when its checkpoints or rollout settings changed.
"""
import hashlib
import json
from pathlib import Path
from typing import Optional

import dagster as dg
import polars as pl

from foundations import storage
from pipelines.metadata import md_table, png_metadata
from foundations.publish import resolve_version
from foundations.recipes import load_recipe

CURATED = "ant_skills_curated"  # offline RL learns from the curated, referee-labelled cut...
ALL_DATA = "ant_skills"  # ...and must beat behaviour cloning on everything that was accepted
POLICY = "policy_checkpoint"
BASELINE = "baseline_checkpoint"

TRAINING_POOL = "training"  # dagster.yaml limits every pool to one at a time: trainings never share a machine
RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


class TrainingConfig(dg.Config):
    """One offline-RL run on the newest version of a published dataset (train split)."""

    recipe: str = CURATED
    algorithm: str = "iql"  # iql | cql | td3plusbc | bc
    preset: str = "cpu"  # cpu: one trailing backbone layer, a step budget; gpu: whole backbone, more steps
    n_steps: Optional[int] = None  # None: the preset's
    n_steps_per_epoch: Optional[int] = None  # None: the preset's; d3rlpy trains n_steps // this many epochs
    reward_column: str = "combined_reward"  # reward | referee_reward | combined_reward
    seed: int = 0
    # One torch thread: on a 2-core machine shared with anything else, two threads wait on each
    # other (4-7x slower IQL updates measured in benchmarks/train_benchmark.py). None: torch's default.
    num_threads: Optional[int] = 1


def train_checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig, name: str) -> dg.MaterializeResult:
    """Train (or reuse) checkpoint `name` on the newest dataset version; the shared body of both assets."""
    from training.checkpoints import list_checkpoints, save_checkpoint
    from training.offline_rl import TrainConfig, train

    dataset = resolve_version(config.recipe, "latest")
    overrides = {"algorithm": config.algorithm, "reward_column": config.reward_column, "seed": config.seed,
                 "num_threads": config.num_threads}
    for name_ in ("n_steps", "n_steps_per_epoch"):
        if getattr(config, name_) is not None:
            overrides[name_] = getattr(config, name_)
    train_config = TrainConfig.from_preset(config.preset, **overrides)
    key = hashlib.sha256(
        json.dumps([dataset["content_hash"], train_config.to_dict()], sort_keys=True, default=str).encode()
    ).hexdigest()[:16]

    existing = [p for p in list_checkpoints(name) if _manifest(p)["metrics"].get("training_key") == key]
    if existing:
        path, trained = existing[-1], False
        context.log.info(f"{name}: {path.name} was trained on {config.recipe} {dataset['version']} with this config")
    else:
        table = pl.read_parquet(Path(dataset["path"]) / "data" / "train-*.parquet")
        result = train(table, train_config)
        path = save_checkpoint(
            result, name, version=_next_version(list_checkpoints(name)),
            dataset_name=config.recipe, dataset_version=dataset["version"],
            recipe=load_recipe(config.recipe).to_dict(), metrics={"training_key": key},
        )
        trained = True
    manifest = _manifest(path)
    training = manifest["training"]
    curve = pl.DataFrame(training["learning_curve"])
    metadata = {
        "path": dg.MetadataValue.path(str(path)),
        "version": manifest["version"],
        "dataset_version": dataset["version"],
        "trained_now": trained,
        "algorithm": manifest["algorithm"],
        "reward_column": config.reward_column if config.algorithm != "bc" else "none (behaviour cloning)",
        "seconds": training["metrics"].get("seconds"),
        "seconds_per_update": training["metrics"].get("seconds_per_update"),
        "transitions": training["metrics"].get("n_transitions"),
        "expert_usage": dg.MetadataValue.json(training["expert_usage"]),
        "learning_curve": md_table(curve),
    }
    if curve.height:
        from training.evaluation import learning_curves_png

        metadata |= png_metadata(learning_curves_png({name: curve}), f"{name}_learning_curve")
    return dg.MaterializeResult(metadata=metadata)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _next_version(existing: list[Path]) -> str:
    if not existing:
        return "1.0.0"
    major, minor, _ = _manifest(existing[-1])["version"].split(".")
    return f"{major}.{int(minor) + 1}.0"


@dg.asset(
    name=POLICY,
    group_name="train",
    deps=[dg.AssetKey(["hub", CURATED])],
    pool=TRAINING_POOL,
    retry_policy=RETRY,
    description="IQL with a LoRA mixture-of-experts MiniLM encoder on the newest curated dataset version, "
    "rewarded by the environment plus the referee. Immutable, versioned; retrained only when data or config change.",
    kinds={"pytorch", "d3rlpy"},
)
def policy_checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig) -> dg.MaterializeResult:
    return train_checkpoint(context, config, POLICY)


class BaselineConfig(TrainingConfig):
    recipe: str = ALL_DATA
    algorithm: str = "bc"


@dg.asset(
    name=BASELINE,
    group_name="train",
    deps=[dg.AssetKey(["hub", ALL_DATA])],
    pool=TRAINING_POOL,
    retry_policy=RETRY,
    description="Behaviour cloning on all of the same data with the same encoder: the bar offline RL must clear.",
    kinds={"pytorch", "d3rlpy"},
)
def baseline_checkpoint(context: dg.AssetExecutionContext, config: BaselineConfig) -> dg.MaterializeResult:
    return train_checkpoint(context, config, BASELINE)


class EvaluationConfig(dg.Config):
    seeds: list[int] = [1000, 1001, 1002, 1003, 1004]  # per skill; the same for every policy and reference
    steps: int = 200  # control steps per rollout (10 s)


@dg.asset(
    group_name="train",
    deps=[POLICY, BASELINE],
    description="Closed-loop rollouts of both checkpoints in the simulator for every skill, as normalized scores "
    "(0 = random operator, 100 = expert operator), beside offline metrics and learning curves.",
    kinds={"mujoco"},
)
def policy_evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig) -> dg.MaterializeResult:
    from training.checkpoints import latest_checkpoint, load_checkpoint
    from training.evaluation import evaluate_policy, learning_curves_png, per_skill, reference_scores

    paths = {name: latest_checkpoint(name) for name in (POLICY, BASELINE)}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(f"no checkpoint for {missing}: materialize them first")
    key = hashlib.sha256(json.dumps([str(p) for p in paths.values()] + [config.seeds, config.steps]).encode()).hexdigest()[:16]
    cached = storage.area("evaluations") / f"{key}.parquet"
    if cached.exists():
        rollouts = pl.read_parquet(cached)
        context.log.info("these checkpoints were evaluated with these settings before; reusing the rollouts")
    else:
        checkpoints = {name: load_checkpoint(p) for name, p in paths.items()}
        instructions = checkpoints[POLICY].instructions
        refs = reference_scores(instructions, config.seeds, config.steps)
        rollouts = pl.concat([
            evaluate_policy(ckpt.policy, instructions, config.seeds, config.steps, refs, label=name)
            for name, ckpt in checkpoints.items()
        ])
        rollouts.write_parquet(cached)
    table = per_skill(rollouts)
    storage.write_partition(table.with_columns(pl.lit(key).alias("evaluation")), "policy_evaluation", "latest")
    overall = dict(table.filter(pl.col("instruction") == "all skills").select("policy", "normalized_score").iter_rows())
    manifests = {name: _manifest(p) for name, p in paths.items()}
    offline = {
        name: {k: m["training"]["metrics"].get(k) for k in ("td_error", "initial_state_value")}
        for name, m in manifests.items()
    }
    curves = {name: pl.DataFrame(m["training"]["learning_curve"]) for name, m in manifests.items()}
    return dg.MaterializeResult(
        metadata={
            "normalized_score_policy": overall.get(POLICY),
            "normalized_score_bc": overall.get(BASELINE),
            "per_skill": md_table(table),
            "offline_metrics": dg.MetadataValue.json(offline),
            "checkpoints": dg.MetadataValue.json({n: str(p) for n, p in paths.items()}),
            **png_metadata(learning_curves_png(curves), "learning_curves"),
        }
    )
