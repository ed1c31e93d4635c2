"""Training targets: which dataset trains which policy, against which baseline, evaluated where.

A target is `datasets/targets/<name>.yaml` (format: `datasets/targets/README.md`). The
pipeline generates its policy, baseline and evaluation assets and its retraining sensor
from these files; no target is named in code. Loading checks the file against the model
(unknown keys refused), that its datasets are recipes of the same catalog and that its
robot profile loads; every error names the file and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional


from pydantic import BaseModel, ConfigDict, Field, model_validator

from foundations.catalog import list_configs, load_model
from foundations.profile import ProfileError, RobotProfile, load_profile

DEFAULT_SEEDS = list(range(1000, 1020))  # 20 rollouts per skill: enough for a 95 % interval


class TargetError(ValueError):
    """A training target is missing or malformed; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Learner(_Strict):
    """One checkpoint to train: on the newest version of `dataset`, with `algorithm`."""

    dataset: str  # a recipe name: the asset ["hub", dataset] publishes it
    algorithm: Literal["iql", "cql", "td3plusbc", "bc"]
    reward_column: Optional[str] = None  # reward | referee_reward | combined_reward | progress_reward; bc none
    encoder: Literal["lora_moe", "lora", "mlp"] = "lora_moe"  # training.offline_rl.ENCODER_TYPES
    # Critics' encoder (training.offline_rl.CRITIC_ENCODERS): "same" as the policy's, or "mlp" (the transformer
    # stays in the policy only); None: the training preset's (cpu: mlp, gpu: same). Ignored by bc and encoder mlp.
    critic_encoder: Optional[Literal["same", "mlp"]] = None

    @model_validator(mode="after")
    def _reward_for_rl(self) -> "Learner":
        if self.algorithm != "bc" and not self.reward_column:
            raise ValueError(f"algorithm {self.algorithm} learns from rewards: set reward_column "
                             "(reward, referee_reward, combined_reward or progress_reward)")
        return self


class Training(_Strict):
    """Sizes of both runs; None takes the preset's (training.offline_rl.PRESETS)."""

    preset: Literal["cpu", "gpu"] = "cpu"
    n_steps: Optional[int] = Field(None, ge=1)
    n_steps_per_epoch: Optional[int] = Field(None, ge=1)
    seed: int = 0
    # When a checkpoint's dataset grew (same recipe, new version) and its config did not change, the
    # new version starts from the previous one's weights and trains this share of n_steps; null: always
    # from scratch.
    warm_start_share: Optional[float] = Field(0.5, gt=0, le=1)
    # Decay of the moving average of the policy's weights each run ends with (training.policy_average);
    # 0: the last update's weights; None: TrainConfig's default.
    policy_ema: Optional[float] = Field(None, ge=0, lt=1)


class Evaluation(_Strict):
    """Closed-loop rollouts in a simulated embodiment; without `simulator`, offline metrics only."""

    simulator: Optional[str] = None  # a name of simulator.embodiments.EMBODIMENTS
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS), min_length=1)
    steps: Optional[int] = Field(None, ge=1)  # control steps per rollout; None: the embodiment's episode length
    # Other wordings of declared skills, {skill: [texts]}: the policy is asked the text, the simulator the
    # skill, and the scores are reported apart from the declared skills' (language in, not an index).
    paraphrases: dict[str, list[str]] = Field(default_factory=dict)


class Target(_Strict):
    """A validated training target (see the module docstring)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")  # names assets, a job and a sensor
    description: str = ""
    robot: str  # robot profile: datasets/robots/<robot>.yaml (action bounds, skills)
    policy: Learner
    baseline: Learner
    training: Training = Training()
    evaluation: Evaluation = Evaluation()
    # Variants trained and evaluated side by side by the asset ["ablation", name] (job ablate_<name>),
    # each an ordinary checkpoint "<name>-ablation-<variant>"; {variant: learner}.
    ablation: dict[str, Learner] = Field(default_factory=dict)
    path: Optional[Path] = Field(None, exclude=True)

    @property
    def profile(self) -> RobotProfile:
        return load_profile(self.robot)

    @property
    def datasets(self) -> list[str]:
        """The recipes it trains on, each once, policy's first."""
        return list(dict.fromkeys([self.policy.dataset, self.baseline.dataset]))


def load_target(name_or_path: str | Path) -> Target:
    """The training target `datasets/targets/<name>.yaml` (or a path to one); raises TargetError.

    Besides its keys, checks that the datasets it names are recipes of the catalog and that its
    robot profile loads."""
    target = load_model("targets", name_or_path, Target, TargetError)
    recipes = list_configs("recipes")
    learners = {"policy": target.policy, "baseline": target.baseline,
                **{f"ablation.{k}": v for k, v in target.ablation.items()}}
    for where, learner in learners.items():
        if learner.dataset not in recipes:
            raise TargetError(f"{target.path}: key '{where}.dataset': no recipe {learner.dataset!r} in the catalog "
                              f"(known: {', '.join(recipes) or 'none'})")
    try:
        load_profile(target.robot)
    except ProfileError as exc:
        raise TargetError(f"{target.path}: key 'robot': {exc}") from None
    return target


def list_targets() -> list[str]:
    """Names of every training target in the catalog."""
    return list_configs("targets")
