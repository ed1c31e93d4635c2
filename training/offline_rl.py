"""Offline RL (IQL, CQL, TD3+BC) and behaviour cloning on the canonical episode table.

One `train` call: reject unusable episodes (returned, never dropped silently),
build the MDPDataset, put the LoRA-MoE encoder (or a plain MLP baseline) on
every network (or, with `critic_encoder="mlp"`, on the policy only), run d3rlpy's fitter, and return the algorithm with a per-epoch
learning curve, expert usage and timings.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import d3rlpy
import numpy as np
import polars as pl
import structlog
import torch
from d3rlpy.logging import NoopAdapterFactory
from d3rlpy.metrics import InitialStateValueEstimationEvaluator, TDErrorEvaluator
from d3rlpy.models.encoders import EncoderFactory, VectorEncoderFactory
from d3rlpy.optimizers import AdamFactory, OptimizerFactory
from d3rlpy.optimizers.optimizers import _get_parameters_from_named_modules, register_optimizer_factory
from d3rlpy.serializable_config import CONFIG_STORAGE
from d3rlpy.preprocessing import MinMaxActionScaler, MultiplyRewardScaler

from training.critic_encoder import CriticMLPEncoderFactory
from training.lora_moe import (
    LoRAMoEEncoderFactory,
    expert_usage,
    make_observations,
    mark_targets,
    pop_aux_loss,
    text_ids,
)
from training.mdp_dataset import build_mdp_dataset, check_bounds, reward_scale, split_trainable, state_statistics
from training.policy_average import average_policy

__all__ = [
    "ALGORITHMS",
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "build_mdp_dataset",
    "split_trainable",
    "train",
    "make_algo",
    "make_encoder_factory",
    "make_critic_encoder_factory",
    "policy_actions",
]

ALGORITHMS = ("iql", "cql", "td3plusbc", "bc")
# lora_moe: routed LoRA experts; lora: one LoRA of the same parameter count (rank n_experts * rank,
# the ablation of the routing); mlp: d3rlpy's VectorEncoder (256, 256), no language model.
ENCODER_TYPES = ("lora_moe", "lora", "mlp")
# Where the transformer sits in actor-critic algorithms: "same" puts the policy's encoder on the critics too
# (Q-functions, IQL's value function and their targets); "mlp" gives the critics d3rlpy's MLP on the
# normalised state and a one-hot instruction (training.critic_encoder) and keeps the transformer in the policy.
CRITIC_ENCODERS = ("same", "mlp")

# Presets: the CPU one trains 5,000 updates (400, the earlier budget, left IQL far from converged) with one trailing MiniLM layer,
# one token per sample and the transformer in the policy only (critics on d3rlpy's MLP: an IQL update costs about
# a third of the all-transformer one, with no loss in the ablation; benchmarks/train_benchmark.py measures it);
# the GPU one runs the whole backbone on every network.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"n_steps": 5000, "n_steps_per_epoch": 500, "batch_size": 64, "device": "cpu:0", "critic_encoder": "mlp",
            "encoder": {"n_layers": 1, "n_state_tokens": 1}},
    "gpu": {"n_steps": 20000, "n_steps_per_epoch": 1000, "batch_size": 256, "device": "cuda:0", "critic_encoder": "same",
            "encoder": {"n_layers": 0, "n_state_tokens": 4}},
}


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: the CPU preset).

    Args:
        algorithm: "iql", "cql", "td3plusbc" or "bc".
        n_steps, n_steps_per_epoch: d3rlpy trains n_steps // n_steps_per_epoch epochs.
        batch_size: transitions per update.
        encoder_type: "lora_moe" (default), "lora" (one adapter of the same parameter count) or "mlp"
            (d3rlpy's VectorEncoder, a baseline).
        critic_encoder: "same" (the critics get `encoder_type` too) or "mlp" (the critics get d3rlpy's MLP
            on the normalised state and a one-hot instruction; the policy keeps its transformer: see
            training.critic_encoder). Ignored by bc (no critic) and by encoder_type "mlp" (all MLP anyway).
        encoder: LoRA-MoE settings; instructions and state statistics are filled in from the data.
        reward_column: "reward", "referee_reward" or "combined_reward" (ignored by bc).
        action_bounds: [low, high] of every action dimension, from the robot profile
            (foundations.profile.load_profile(name).action_bounds). Episodes with actions outside
            are rejected, and the policy's outputs are scaled to these bounds (d3rlpy's
            MinMaxActionScaler): its actor squashes to [-1, 1] internally.
        instructions: instruction vocabulary; None = the sorted distinct instructions of the table.
        normalize_reward: scale rewards by 1/std (never shifted). Off by default: referee rewards
            are bounded by construction (a segment's rewards sum to [-1, 1]), and 1/std turned a
            weak referee's nearly constant reward into unit-variance noise (x570 on the demo
            fleet; IQL's normalized score rose from 19 to 49 without it).
        policy_ema: decay of the moving average of the policy's trained weights that the run ends with
            (training.policy_average: the mean of the updates so far, then an exponential moving average
            over the last ~1/(1 - decay) updates); 0 keeps the last update's weights. Every
            algorithm gets it, BC too, so that baselines are averaged alike. The learning curve's
            td_error and initial_state_value come from d3rlpy's evaluators inside its fitter, so they see
            the last update's policy, not the average.
        eval_episodes: episodes scored by the TD-error and initial-value evaluators each epoch.
        num_threads: torch threads while training (restored afterwards). On a CPU shared with
            other work, 1 thread avoids OpenMP threads waiting on each other (measured 10x slower
            with 2 threads on an oversubscribed 2-core machine; see benchmarks/train_benchmark.py).
        preset: "cpu" or "gpu"; `TrainConfig.from_preset` applies its sizes.
    """

    algorithm: str = "iql"
    n_steps: int = PRESETS["cpu"]["n_steps"]
    n_steps_per_epoch: int = PRESETS["cpu"]["n_steps_per_epoch"]
    batch_size: int = PRESETS["cpu"]["batch_size"]
    encoder_type: str = "lora_moe"
    critic_encoder: str = PRESETS["cpu"]["critic_encoder"]
    encoder: LoRAMoEEncoderFactory = field(
        default_factory=lambda: LoRAMoEEncoderFactory(**PRESETS["cpu"]["encoder"])
    )
    reward_column: str = "reward"
    action_bounds: Optional[tuple[float, float]] = None  # required to train: the robot profile's
    instructions: Optional[list[str]] = None
    seed: int = 0
    device: str = PRESETS["cpu"]["device"]
    preset: str = "cpu"
    actor_learning_rate: float = 3e-4
    critic_learning_rate: float = 3e-4
    gamma: float = 0.99
    expectile: float = 0.7  # IQL
    weight_temp: float = 3.0  # IQL
    td3_alpha: float = 2.5  # TD3+BC
    conservative_weight: float = 5.0  # CQL
    normalize_reward: bool = False
    policy_ema: float = 0.999
    eval_episodes: int = 8
    num_threads: Optional[int] = None  # torch intra-op threads for this call; None leaves torch's setting

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> "TrainConfig":
        """A config with the sizes of `preset` ("cpu" or "gpu"), then `overrides`."""
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r} is unknown; choose from {sorted(PRESETS)}")
        sizes = dict(PRESETS[preset])
        encoder = overrides.pop("encoder", None) or LoRAMoEEncoderFactory()
        encoder = dataclasses.replace(encoder, **sizes.pop("encoder"))
        return cls(preset=preset, encoder=encoder, **{**sizes, **overrides})

    @property
    def n_epochs(self) -> int:
        return self.n_steps // self.n_steps_per_epoch

    def validate(self) -> None:
        """Raise ValueError saying what to fix."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {self.algorithm!r} is unknown; choose from {ALGORITHMS}")
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type {self.encoder_type!r} is unknown; choose from {ENCODER_TYPES}")
        if self.critic_encoder not in CRITIC_ENCODERS:
            raise ValueError(f"critic_encoder {self.critic_encoder!r} is unknown; choose from {CRITIC_ENCODERS}")
        if self.action_bounds is None:
            raise ValueError("action_bounds is not set: give the robot profile's [low, high] "
                             "(foundations.profile.load_profile(name).action_bounds)")
        check_bounds(self.action_bounds)
        if not 0.0 <= self.policy_ema < 1.0:
            raise ValueError(f"policy_ema={self.policy_ema} must be in [0, 1): e.g. 0.999, or 0 to keep the last "
                             "update's weights")
        if self.n_steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("n_steps_per_epoch and batch_size must be positive")
        if self.n_steps < self.n_steps_per_epoch:
            raise ValueError(
                f"n_steps={self.n_steps} is below n_steps_per_epoch={self.n_steps_per_epoch}: d3rlpy runs "
                "n_steps // n_steps_per_epoch epochs, so this would train nothing. Raise n_steps or lower "
                "n_steps_per_epoch."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (for manifests)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """A trained algorithm and what happened while training it."""

    algo: Any  # a d3rlpy QLearningAlgoBase
    config: TrainConfig
    instructions: list[str]
    curve: pl.DataFrame  # one row per epoch: epoch, step, losses, td_error, initial_state_value, aux_loss, ...
    expert_usage: dict[str, list[list[int]]]  # encoder -> layer -> samples per expert
    seconds: float  # whole call, dataset building included
    seconds_per_update: float  # mean d3rlpy algorithm_update time
    n_episodes: int
    n_transitions: int
    reward_scale: float
    rejected: pl.DataFrame  # QUARANTINE_SCHEMA rows, stage "training"

    def final_metrics(self) -> dict[str, float]:
        """The last epoch's metrics plus timings, as plain floats."""
        last = self.curve.row(-1, named=True) if self.curve.height else {}
        metrics = {k: float(v) for k, v in last.items() if isinstance(v, (int, float)) and v is not None}
        metrics.update(
            seconds=self.seconds,
            seconds_per_update=self.seconds_per_update,
            n_episodes=float(self.n_episodes),
            n_transitions=float(self.n_transitions),
        )
        return metrics


def make_encoder_factory(config: TrainConfig, instructions: list[str], clean: pl.DataFrame) -> EncoderFactory:
    """The encoder factory of `config`, with instructions and state statistics taken from `clean`."""
    if config.encoder_type == "mlp":
        return VectorEncoderFactory(hidden_units=[256, 256])
    mean, std = state_statistics(clean)
    factory = dataclasses.replace(config.encoder, instructions=list(instructions), state_mean=mean, state_std=std)
    if config.encoder_type == "lora":
        factory = single_lora(factory)
    factory.validate(len(mean) + 1)
    return factory


def make_critic_encoder_factory(config: TrainConfig, instructions: list[str], clean: pl.DataFrame,
                                encoder: EncoderFactory) -> EncoderFactory:
    """The critics' encoder factory: `encoder` itself, or with critic_encoder "mlp" (and a transformer
    policy) d3rlpy's MLP on the state normalised with `clean`'s statistics and a one-hot instruction."""
    if config.critic_encoder == "same" or config.encoder_type == "mlp":
        return encoder
    mean, std = state_statistics(clean)
    return CriticMLPEncoderFactory(n_instructions=len(instructions), state_mean=mean, state_std=std)


def single_lora(factory: LoRAMoEEncoderFactory) -> LoRAMoEEncoderFactory:
    """The same encoder with one LoRA of the mixture's parameter count instead of routed experts.

    Written with the same hand-made adapter as the experts (not peft) so that the ablation
    changes only the routing, not the implementation."""
    return dataclasses.replace(factory, n_experts=1, top_k=1, rank=factory.rank * factory.n_experts,
                               aux_loss_coef=0.0, expert_compute="dense")


@dataclass()
class FusedAdamFactory(AdamFactory):
    """d3rlpy's Adam with torch's fused kernel: one op over all parameters instead of about ten
    per parameter tensor. The LoRA-MoE networks hold ~30 tensors each, and the per-tensor loop
    took ~20 % of an IQL update on CPU (benchmarks/train_benchmark.py profiles the same update)."""

    def create_optimizer(self, named_modules: Any, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(_get_parameters_from_named_modules(named_modules), lr=lr, betas=self.betas,
                                eps=self.eps, weight_decay=self.weight_decay, amsgrad=self.amsgrad, fused=True)

    @staticmethod
    def get_type() -> str:
        return "fused_adam"


# Registration is global in d3rlpy and asserts on duplicates (module reloads).
if FusedAdamFactory.get_type() not in CONFIG_STORAGE[OptimizerFactory].config_list:
    register_optimizer_factory(FusedAdamFactory)


def make_algo(config: TrainConfig, encoder: EncoderFactory, scale: float, action_size: int,
              critic_encoder: Optional[EncoderFactory] = None) -> Any:
    """An unbuilt d3rlpy algorithm of `config` with `encoder` on the policy and `critic_encoder` (default:
    `encoder`) on the Q-functions and value function, rewards times `scale` and actions scaled between
    the robot's bounds and the actor's [-1, 1]."""
    critic = critic_encoder or encoder
    scaler = MultiplyRewardScaler(scale) if config.normalize_reward else None
    low, high = check_bounds(config.action_bounds)
    actions = MinMaxActionScaler(minimum=np.full(action_size, low, np.float32),
                                 maximum=np.full(action_size, high, np.float32))
    common = dict(batch_size=config.batch_size, gamma=config.gamma, reward_scaler=scaler, action_scaler=actions,
                  actor_optim_factory=FusedAdamFactory(), critic_optim_factory=FusedAdamFactory())
    if config.algorithm == "iql":
        algo_config = d3rlpy.algos.IQLConfig(
            actor_encoder_factory=encoder,
            critic_encoder_factory=critic,
            value_encoder_factory=critic,
            actor_learning_rate=config.actor_learning_rate,
            critic_learning_rate=config.critic_learning_rate,
            expectile=config.expectile,
            weight_temp=config.weight_temp,
            **common,
        )
    elif config.algorithm == "cql":
        algo_config = d3rlpy.algos.CQLConfig(
            actor_encoder_factory=encoder,
            critic_encoder_factory=critic,
            actor_learning_rate=config.actor_learning_rate,
            critic_learning_rate=config.critic_learning_rate,
            conservative_weight=config.conservative_weight,
            **common,
        )
    elif config.algorithm == "td3plusbc":
        algo_config = d3rlpy.algos.TD3PlusBCConfig(
            actor_encoder_factory=encoder,
            critic_encoder_factory=critic,
            actor_learning_rate=config.actor_learning_rate,
            critic_learning_rate=config.critic_learning_rate,
            alpha=config.td3_alpha,
            **common,
        )
    else:
        algo_config = d3rlpy.algos.BCConfig(
            encoder_factory=encoder, learning_rate=config.actor_learning_rate, batch_size=config.batch_size,
            action_scaler=actions, optim_factory=FusedAdamFactory(),
        )
    return algo_config.create(device=config.device)


def _evaluation_episodes(dataset: Any, n: int) -> list[Any]:
    """Up to n episodes spread evenly over the dataset (deterministic)."""
    episodes = list(dataset.episodes)
    if n <= 0 or not episodes:
        return []
    picks = np.unique(np.linspace(0, len(episodes) - 1, num=min(n, len(episodes))).round().astype(int))
    return [episodes[i] for i in picks]


def train(table: pl.DataFrame, config: TrainConfig, *, progress: bool = True, init_from: Any = None,
          n_steps: Optional[int] = None, on_epoch: Optional[Callable[[int, Any], None]] = None) -> TrainResult:
    """Train `config.algorithm` on a canonical episode table.

    Unusable episodes are left out and returned in `TrainResult.rejected`; a table
    with none usable, or settings that cannot train, raise ValueError with the fix.
    `init_from` (a trained algorithm of the same config and instructions) warm-starts every
    network, optimizer state included: adapters, experts, routers, critics and their targets.
    `n_steps` overrides config.n_steps for this run only (a warm start trains fewer updates
    under the same config). `on_epoch(step, algo)` is called after each epoch (e.g. to score
    intermediate policies, benchmarks/warm_start_benchmark.py).
    """
    config.validate()
    previous_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        # d3rlpy logs every hyperparameter and epoch at info level; the progress bar, the
        # learning curve and the checkpoint manifest say the same more readably.
        with quiet_d3rlpy():
            return _train(table, config, progress, init_from, n_steps or config.n_steps, on_epoch)
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def quiet_d3rlpy() -> Iterator[None]:
    """Silence d3rlpy's info logs (it prints every hyperparameter each fit) for a while."""
    saved = structlog.get_config()

    def drop_expected(logger: Any, method: str, event: dict) -> dict:
        # The fitter warns that models are built already: `_train` builds them on purpose.
        if str(event.get("event", "")).startswith("Skip building models"):
            raise structlog.DropEvent
        return event

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        processors=[drop_expected, *saved["processors"]])
    try:
        yield
    finally:
        structlog.configure(**saved)


def _train(table: pl.DataFrame, config: TrainConfig, progress: bool, init_from: Any, n_steps: int,
           on_epoch: Optional[Callable[[int, Any], None]] = None) -> TrainResult:
    start = time.perf_counter()
    needs_reward = config.algorithm != "bc"
    reward_column = config.reward_column if needs_reward else None
    if needs_reward and config.reward_column not in table.columns:
        raise ValueError(
            f"reward column {config.reward_column!r} is not in the table (columns: {table.columns}); "
            "set TrainConfig.reward_column"
        )
    if config.instructions is not None:
        instructions = list(config.instructions)
    else:
        instructions = sorted(table["language_instruction"].drop_nulls().unique().to_list())
    if not instructions:
        raise ValueError("no language_instruction values in the table and none configured")

    clean, rejected = split_trainable(table, reward_column, instructions, config.action_bounds)
    if clean.is_empty():
        reasons = "; ".join(rejected["reason"].unique().head(5).to_list()) or "the table is empty"
        raise ValueError(f"no episode can be trained on ({rejected['episode_id'].n_unique()} rejected): {reasons}")
    dataset = build_mdp_dataset(clean, reward_column, instructions, config.action_bounds)
    scale = reward_scale(clean, reward_column) if reward_column else 1.0

    d3rlpy.seed(config.seed)
    encoder = make_encoder_factory(config, instructions, clean)
    critic = make_critic_encoder_factory(config, instructions, clean, encoder)
    algo = make_algo(config, encoder, scale, dataset.dataset_info.action_size, critic)
    evaluators = None
    if config.algorithm != "bc" and config.eval_episodes > 0:
        episodes = _evaluation_episodes(dataset, config.eval_episodes)
        evaluators = {
            "td_error": TDErrorEvaluator(episodes=episodes),
            "initial_state_value": InitialStateValueEstimationEvaluator(episodes=episodes),
        }

    # Built before fitting (the fitter then skips building) so that the target networks can be marked.
    algo.build_with_dataset(dataset)
    if init_from is not None:
        buffer = io.BytesIO()
        init_from.impl.save_model(buffer)
        buffer.seek(0)
        try:
            algo.impl.load_model(buffer)
        except RuntimeError as exc:  # shapes differ: another vocabulary, state layout or encoder
            raise ValueError(f"cannot warm-start from a model of another shape: {exc}") from None
    mark_targets(algo)
    average = average_policy(algo, config.policy_ema)
    per_epoch = min(config.n_steps_per_epoch, n_steps)
    rows: list[dict[str, Any]] = []
    for epoch, metrics in algo.fitter(
        dataset,
        n_steps=n_steps,
        n_steps_per_epoch=per_epoch,
        experiment_name=f"{config.algorithm}_{config.encoder_type}",
        with_timestamp=False,
        logger_adapter=NoopAdapterFactory(),
        show_progress=progress,
        evaluators=evaluators,
        callback=average.update if average else None,
    ):
        rows.append({"epoch": epoch, "step": epoch * per_epoch, **metrics, "aux_loss": pop_aux_loss(algo)})
        if on_epoch is not None:
            with average.swapped_in() if average else contextlib.nullcontext():
                on_epoch(epoch * per_epoch, algo)
    if average:
        average.apply()

    curve = pl.DataFrame(rows)
    per_update = (
        float(curve["time_algorithm_update"].mean()) if "time_algorithm_update" in curve.columns else float("nan")
    )
    return TrainResult(
        algo=algo,
        config=config,
        instructions=instructions,
        curve=curve,
        expert_usage=expert_usage(algo),
        seconds=time.perf_counter() - start,
        seconds_per_update=per_update,
        n_episodes=len(dataset.episodes),
        n_transitions=int(dataset.transition_count),
        reward_scale=scale,
        rejected=rejected,
    )


def policy_actions(algo: Any, states: np.ndarray, texts: Sequence[str], instructions: Sequence[str]) -> np.ndarray:
    """Greedy actions of a trained policy for states (N, D) under instruction texts (N or 1): any text
    for a LoRA-MoE policy, its training instructions for an MLP one (`text_ids`)."""
    ids = text_ids(algo, list(texts), instructions)
    return algo.predict(make_observations(states, ids))
