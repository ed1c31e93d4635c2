"""d3rlpy's MLP encoder for the critics of a LoRA-MoE (or single-LoRA) policy: `critic_encoder: mlp`.

MoRE puts its LoRA experts in the policy's transformer; the Q-functions and the value function are
separate networks that only score (state, instruction[, action]) during training. Giving them the
transformer too made one IQL update cost five transformer passes with backward (policy, two Q-functions,
value; plus the target Q-functions) where the policy needs one (benchmarks/train_benchmark.py).

The critic sees what the LoRA-MoE encoder sees, in an MLP's terms: the state normalised with the
dataset's statistics (clipped like the transformer's) and the instruction as a one-hot over the training
instructions, then d3rlpy's own VectorEncoder (256, 256). Not d3rlpy's observation_scaler: that would
rescale the instruction index of every network, the policy's too. The critic never runs at inference,
so an instruction added after training (an index past the training ones) only needs a valid one-hot:
it is clamped to the last training instruction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from d3rlpy.models.encoders import EncoderFactory, VectorEncoderFactory, register_encoder_factory
from d3rlpy.models.torch import Encoder, EncoderWithAction
from d3rlpy.serializable_config import CONFIG_STORAGE
from torch import nn

from training.lora_moe import STATE_CLIP, instruction_indices

HIDDEN_UNITS = [256, 256]  # d3rlpy's default VectorEncoder, the same as the `mlp` encoder baseline


class _Features(nn.Module):
    """Observation [state, instruction index] -> [normalised state, one-hot instruction]."""

    def __init__(self, factory: "CriticMLPEncoderFactory"):
        super().__init__()
        self.n_instructions = factory.n_instructions
        self.register_buffer("state_mean", torch.tensor(factory.state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(factory.state_std, dtype=torch.float32).clamp(min=1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = ((x[:, :-1] - self.state_mean) / self.state_std).clamp(-STATE_CLIP, STATE_CLIP)
        idx = instruction_indices(x[:, -1], self.n_instructions)
        return torch.cat([state, F.one_hot(idx, self.n_instructions).to(state.dtype)], dim=1)

    @property
    def width(self) -> int:
        return self.state_mean.shape[0] + self.n_instructions


class CriticMLPEncoder(Encoder):
    def __init__(self, factory: "CriticMLPEncoderFactory"):
        super().__init__()
        self.features = _Features(factory)
        self.mlp = VectorEncoderFactory(hidden_units=HIDDEN_UNITS).create((self.features.width,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.mlp(self.features(x))


class CriticMLPEncoderWithAction(EncoderWithAction):
    def __init__(self, factory: "CriticMLPEncoderFactory", action_size: int, discrete: bool):
        super().__init__()
        self.features = _Features(factory)
        self.mlp = VectorEncoderFactory(hidden_units=HIDDEN_UNITS).create_with_action(
            (self.features.width,), action_size, discrete)

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.mlp(self.features(x), action)


@dataclass()
class CriticMLPEncoderFactory(EncoderFactory):
    """d3rlpy's VectorEncoder (256, 256) on the normalised state and a one-hot instruction (serialised
    by d3rlpy into its `.d3` files like any encoder factory).

    Args:
        n_instructions: size of the training vocabulary (the observation's last value indexes it).
        state_mean, state_std: per-feature statistics of the state (from the training data).
    """

    n_instructions: int = 1
    state_mean: Optional[list[float]] = None
    state_std: Optional[list[float]] = None

    def _check(self, observation_shape: Any) -> None:
        dim = observation_shape[0]
        if self.state_mean is None or self.state_std is None:
            raise ValueError("CriticMLPEncoderFactory: state_mean and state_std are not set")
        if len(self.state_mean) != dim - 1 or len(self.state_std) != dim - 1 or self.n_instructions < 1:
            raise ValueError(f"CriticMLPEncoderFactory: observations of {dim} values need {dim - 1} state "
                             f"statistics (got {len(self.state_mean)}) and n_instructions >= 1")

    def create(self, observation_shape: Any) -> CriticMLPEncoder:
        self._check(observation_shape)
        return CriticMLPEncoder(self)

    def create_with_action(self, observation_shape: Any, action_size: int,
                           discrete_action: bool = False) -> CriticMLPEncoderWithAction:
        self._check(observation_shape)
        return CriticMLPEncoderWithAction(self, action_size, discrete_action)

    @staticmethod
    def get_type() -> str:
        return "critic_mlp"


# Registration is global in d3rlpy and asserts on duplicates (module reloads).
if CriticMLPEncoderFactory.get_type() not in CONFIG_STORAGE[EncoderFactory].config_list:
    register_encoder_factory(CriticMLPEncoderFactory)
