"""A LoRA mixture-of-experts encoder on a frozen pretrained transformer, for d3rlpy.

Observation layout (what every network of the algorithm receives):

    observation = [state_0, ..., state_{D-1}, instruction_index]      float32, D + 1 values

`instruction_index` is the position of the step's language instruction in the
factory's `instructions` list (see `make_observations`), or, for a text met after
training, its position after them (`text_ids` embeds such texts on the fly): the
observation carries a float, d3rlpy's only input, and the encoder turns it back into
the text's MiniLM embedding (computed once per process and text), never a learnt
per-index vector. The index is rounded and clamped (d3rlpy probes encoders with
uniform random floats).

Tokens fed to the trailing `n_layers` layers of the backbone:
    [instruction embedding] + n_state_tokens tokens projected from the state (and the action)
The instruction token is a prefix that attends only to itself, so its pass through
the layers runs once per distinct instruction in a batch; each sample's tokens attend
to it and to each other. The frozen matmuls run in bf16 where the hardware has bf16
units (AMX, AVX512-BF16, CUDA); adapters, norms and attention stay fp32.
The backbone's weights are frozen non-persistent buffers shared by all encoders.
Each of those layers carries `n_experts` LoRA experts on the query, value and MLP
linears and a router on the instruction embedding that picks the top-k experts
per sample; a Switch-style load-balancing term is added to whatever loss
backpropagates through the encoder.

LoRA is written by hand rather than with peft: peft's LoRA layers hold one
adapter (or a fixed weighted set) per module, with no per-sample routing, so a
router would have to re-enter peft's internals on every call; a few tensors and
two matmuls express the routed mixture directly. peft also wraps nn.Linear
parameters, and the frozen weights here must stay shared buffers (one copy for all
six IQL networks; d3rlpy's save_policy unfreezes parameters). The single-LoRA
ablation uses the same code with one expert, so that it differs only in routing.
"""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from d3rlpy.models.encoders import EncoderFactory, register_encoder_factory
from d3rlpy.models.torch import Encoder, EncoderWithAction
from d3rlpy.serializable_config import CONFIG_STORAGE
from torch import nn
from transformers.activations import ACT2FN

from training.backbone import (
    LAYER_TENSORS,
    BackboneInfo,
    backbone_info,
    embed_instructions,
    frozen_layer,
    resolve_model_dir,
)

# LoRA target name -> (frozen weight, frozen bias) buffer names in a layer.
TARGETS = {
    "query": ("q_w", "q_b"),
    "key": ("k_w", "k_b"),
    "value": ("v_w", "v_b"),
    "attention_output": ("ao_w", "ao_b"),
    "intermediate": ("i_w", "i_b"),
    "output": ("o_w", "o_b"),
}
FROZEN_BUFFERS = tuple(LAYER_TENSORS)
EXPERT_COMPUTE = ("auto", "dense", "routed")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
# "auto" computes only the routed experts when they are at most this share of all experts.
# Measured on CPU (benchmarks/train_benchmark.py): routed-only loses at top-2 of 4 (1.4-2x
# slower, gather/scatter costs more than the rank-8 matmuls it saves) and wins at top-1 of 8.
ROUTED_MAX_SHARE = 1 / 8
STATE_CLIP = 10.0  # normalised states beyond this many std are outliers, not signal


class AddAuxiliaryLoss(torch.autograd.Function):
    """Identity on `x` whose backward also sends gradient 1 into `loss`.

    d3rlpy builds each algorithm's losses itself; this lets the router's
    load-balancing term join whichever loss backpropagates through the encoder
    without subclassing every algorithm.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        ctx.loss_dtype = loss.dtype
        ctx.loss_requires_grad = loss.requires_grad
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        grad_loss = None
        if ctx.loss_requires_grad:
            grad_loss = torch.ones((), dtype=ctx.loss_dtype, device=grad_output.device)
        return grad_output, grad_loss


class LoRAExperts(nn.Module):
    """`n_experts` low-rank adapters of one frozen linear: delta = gate * (alpha/r) B A x.

    A is Kaiming-initialised and B is zero, so a fresh adapter changes nothing.
    """

    def __init__(self, n_experts: int, rank: int, in_features: int, out_features: int, alpha: float):
        super().__init__()
        self.n_experts, self.rank = n_experts, rank
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(n_experts, rank, in_features))
        self.B = nn.Parameter(torch.zeros(n_experts, out_features, rank))
        with torch.no_grad():
            for e in range(n_experts):
                nn.init.kaiming_uniform_(self.A[e], a=math.sqrt(5))

    def forward(self, x: torch.Tensor, gates: torch.Tensor, routed: bool) -> torch.Tensor:
        """x: (M, in) token rows, gates: (M, E) with zeros for experts a row does not use."""
        if routed:
            return self._routed(x, gates)
        # Dense mix: all experts as one rank-(E*r) adapter in two matmuls; unrouted experts get gate 0.
        n_experts, rank = self.n_experts, self.rank
        a_all = self.A.reshape(n_experts * rank, -1)
        b_all = self.B.permute(1, 0, 2).reshape(self.B.shape[1], n_experts * rank)
        h = (x @ a_all.t()) * gates.repeat_interleave(rank, dim=1)
        return (h @ b_all.t()) * self.scaling

    def _routed(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        # One matmul per expert over only the rows routed to it.
        out = x.new_zeros(x.shape[0], self.B.shape[1])
        for e in range(self.n_experts):
            rows = gates[:, e].nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            delta = (x.index_select(0, rows) @ self.A[e].t()) @ self.B[e].t()
            out = out.index_add(0, rows, delta * (gates[rows, e] * self.scaling)[:, None])
        return out


# One moved copy per (frozen tensor, device, dtype), shared by every encoder on that device.
_MOVED: dict[tuple[int, str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _shared_apply(tensor: torch.Tensor, fn: Any) -> torch.Tensor:
    probe = fn(tensor.new_empty(0))
    if probe.device == tensor.device and probe.dtype == tensor.dtype:
        return tensor
    key = (id(tensor), str(probe.device), probe.dtype)
    if key not in _MOVED:
        _MOVED[key] = (tensor, fn(tensor))  # keeps the source alive, so its id is never reused
    return _MOVED[key][1]


def _shared_cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One cast copy of a frozen tensor per dtype, shared by every encoder."""
    return _shared_apply(tensor, lambda t: t.to(dtype))


def bf16_matmul_is_fast() -> bool:
    """True where bf16 matmuls run in hardware: CUDA, or a CPU with AMX or AVX512-BF16."""
    if torch.cuda.is_available():
        return True
    try:
        flags = open("/proc/cpuinfo", encoding="ascii").read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def resolve_compute_dtype(name: str) -> torch.dtype:
    """"auto" = bf16 where `bf16_matmul_is_fast`, else float32."""
    if name == "auto":
        return torch.bfloat16 if bf16_matmul_is_fast() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class MoEBertLayer(nn.Module):
    """One frozen BERT layer (post-LN) with routed LoRA experts on chosen linears."""

    def __init__(
        self,
        frozen: dict[str, torch.Tensor],
        info: BackboneInfo,
        n_experts: int,
        top_k: int,
        rank: int,
        alpha: float,
        targets: Sequence[str],
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.compute_dtype = compute_dtype  # of the frozen matmuls; adapters, norms, attention stay fp32
        for name, tensor in frozen.items():
            # Shared, frozen, outside the state dict: see backbone.frozen_layer.
            self.register_buffer(name, tensor, persistent=False)
        self.hidden_size, self.num_heads = info.hidden_size, info.num_heads
        self.eps = info.layer_norm_eps
        self.act = ACT2FN[info.hidden_act]
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(info.hidden_size, n_experts)
        self.experts = nn.ModuleDict()
        for target in targets:
            weight = frozen[TARGETS[target][0]]
            self.experts[target] = LoRAExperts(n_experts, rank, weight.shape[1], weight.shape[0], alpha)
        self.register_buffer("usage", torch.zeros(n_experts, dtype=torch.float64), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> "MoEBertLayer":
        # d3rlpy moves every network to its device, and Module.to copies buffers even for
        # "cpu:0" on a CPU tensor: route the frozen weights through one shared copy instead.
        frozen = {name: self._buffers.pop(name) for name in FROZEN_BUFFERS}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, tensor in frozen.items():
                self._buffers[name] = _shared_apply(tensor, fn)
        return self

    def route(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k gates (N, E), the 0/1 dispatch mask and the Switch load-balancing loss."""
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(1, top_idx, torch.softmax(top_logits, dim=-1))
        mask = torch.zeros_like(logits).scatter(1, top_idx, 1.0)
        # Switch Transformer: E * sum_e (fraction dispatched to e) * (mean router prob of e);
        # 1.0 when balanced, larger when a few experts take most samples.
        fraction = mask.mean(0) / self.top_k
        prob = torch.softmax(logits, dim=-1).mean(0)
        aux = self.n_experts * (fraction * prob).sum()
        return gates, mask, aux

    def _linear(self, x: torch.Tensor, target: str, gates: torch.Tensor, routed: bool) -> torch.Tensor:
        w_name, b_name = TARGETS[target]
        weight, bias = getattr(self, w_name), getattr(self, b_name)
        if self.compute_dtype != x.dtype:
            # The frozen matmul in bf16 (AMX/AVX512-BF16: ~5x fp32 on this CPU), the adapters in fp32.
            weight, bias = _shared_cast(weight, self.compute_dtype), _shared_cast(bias, self.compute_dtype)
            y = F.linear(x.to(self.compute_dtype), weight, bias).to(x.dtype)
        else:
            y = F.linear(x, weight, bias)
        if target in self.experts:
            y = y + self.experts[target](x, gates, routed)
        return y

    def _block(self, x: torch.Tensor, gates: torch.Tensor, routed: bool, attend: Any) -> torch.Tensor:
        """The layer on token rows x (M, hidden) with per-row gates (M, E); every linear and norm
        is row-wise, so `attend(q, k, v) -> (M, hidden)` alone says which rows see which."""
        q = self._linear(x, "query", gates, routed)
        k = self._linear(x, "key", gates, routed)
        v = self._linear(x, "value", gates, routed)
        attn = self._linear(attend(q, k, v), "attention_output", gates, routed)
        h = x.shape[-1]
        x = F.layer_norm(attn + x, (h,), self.ln1_w, self.ln1_b, self.eps)
        inner = self.act(self._linear(x, "intermediate", gates, routed))
        out = self._linear(inner, "output", gates, routed)
        return F.layer_norm(out + x, (h,), self.ln2_w, self.ln2_b, self.eps)

    def _heads(self, y: torch.Tensor, n: int) -> torch.Tensor:
        """(n * T, hidden) rows -> (n, heads, T, head_dim)."""
        return y.view(n, -1, self.num_heads, y.shape[-1] // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, gates: torch.Tensor, routed: bool) -> torch.Tensor:
        """The BERT layer on sequences x (N, T, hidden), per-sample gates (N, E)."""
        n, t, h = x.shape

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = F.scaled_dot_product_attention(self._heads(q, n), self._heads(k, n), self._heads(v, n))
            return out.transpose(1, 2).reshape(n * t, h)

        return self._block(x.reshape(n * t, h), gates.repeat_interleave(t, dim=0), routed, attend).view(n, t, h)

    def forward_prefixed(
        self, prefix: torch.Tensor, tokens: torch.Tensor, prefix_gates: torch.Tensor, gates: torch.Tensor,
        inv: torch.Tensor, routed: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer on prefix rows (U, hidden), one per distinct instruction, each attending only
        to itself, and sample tokens (N, T, hidden), each attending to its sample's prefix row
        (`inv`: N indices into the U) and to its sample's tokens. Both go through every linear
        together, in one matmul each."""
        u, (n, t, h) = prefix.shape[0], tokens.shape
        rows = torch.cat([prefix, tokens.reshape(n * t, h)])
        row_gates = torch.cat([prefix_gates, gates.repeat_interleave(t, dim=0)])

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys = torch.cat([self._heads(k[:u], u)[inv], self._heads(k[u:], n)], dim=2)
            values = torch.cat([self._heads(v[:u], u)[inv], self._heads(v[u:], n)], dim=2)
            out = F.scaled_dot_product_attention(self._heads(q[u:], n), keys, values)
            # A token attending only to itself gets its own value (softmax over one key is 1).
            return torch.cat([v[:u], out.transpose(1, 2).reshape(n * t, h)])

        out = self._block(rows, row_gates, routed, attend)
        return out[:u], out[u:].view(n, t, h)


def _versions(*tensors: Optional[torch.Tensor]) -> tuple[int, ...]:
    return tuple(-1 if t is None else t._version for t in tensors)


def instruction_indices(column: torch.Tensor, n_instructions: int) -> torch.Tensor:
    """The last observation column as valid indices (robust to d3rlpy's random probes)."""
    column = torch.nan_to_num(column, nan=0.0, posinf=0.0, neginf=0.0)
    return column.round().clamp(0, n_instructions - 1).long()


class LoRAMoEBody(nn.Module):
    """Shared body of the state encoder and the state-action encoder.

    The instruction is a prefix token: it attends only to itself, so its path through the
    layers (frozen weights, its experts) is computed once per distinct instruction in the
    batch, not once per sample; each sample's tokens attend to it and to each other.
    """

    def __init__(self, factory: "LoRAMoEEncoderFactory", observation_dim: int, action_size: int = 0):
        super().__init__()
        factory.validate(observation_dim)
        model_dir = resolve_model_dir(factory.model_dir)
        info = backbone_info(model_dir)
        hidden = info.hidden_size
        state_dim = observation_dim - 1
        self.state_dim, self.action_size = state_dim, action_size
        self.n_state_tokens = factory.n_state_tokens
        self.routed = factory.expert_compute == "routed" or (
            factory.expert_compute == "auto" and factory.top_k / factory.n_experts <= ROUTED_MAX_SHARE
        )
        self.aux_loss_coef = factory.aux_loss_coef
        self.n_instructions = len(factory.instructions)
        # Target networks (d3rlpy's targ_*) move only by Polyak averaging: `mark_targets` sets
        # this so that they run without autograd even where d3rlpy calls them with grad enabled.
        self.is_target = False
        self._memo: Optional[tuple] = None  # target networks only: (x, action, versions, weights stamp, output)

        self.model_dir = model_dir
        self.register_buffer("instruction_table", embed_instructions(model_dir, factory.instructions).clone())
        # Instructions met after training (any text a caller asks for): embedded on the fly, indexed
        # after the trained ones, outside the state dict so that checkpoints keep their shape.
        self.extra_instructions: list[str] = []
        self.register_buffer("extra_table", torch.zeros(0, hidden), persistent=False)
        mean = factory.state_mean or [0.0] * state_dim
        std = factory.state_std or [1.0] * state_dim
        self.register_buffer("state_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.tensor(std, dtype=torch.float32).clamp(min=1e-3))

        # State (and action, for Q-functions) projected together to n_state_tokens tokens: each
        # token costs a full pass through the frozen layers, so the action gets no token of its own.
        self.input_proj = nn.Linear(state_dim + action_size, factory.n_state_tokens * hidden)
        self.token_norm = nn.LayerNorm(hidden)
        self.token_type = nn.Parameter(torch.randn(1 + factory.n_state_tokens, hidden) * 0.02)

        n_layers = info.num_layers if factory.n_layers <= 0 else min(factory.n_layers, info.num_layers)
        self.layer_indices = list(range(info.num_layers - n_layers, info.num_layers))
        compute_dtype = resolve_compute_dtype(factory.compute_dtype)
        self.layers = nn.ModuleList(
            MoEBertLayer(
                frozen_layer(model_dir, i),
                info,
                factory.n_experts,
                factory.top_k,
                factory.rank,
                factory.alpha,
                factory.lora_targets,
                compute_dtype,
            )
            for i in self.layer_indices
        )
        self.head = nn.Linear(2 * hidden + state_dim + action_size, factory.feature_size)
        self.register_buffer("aux_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("aux_count", torch.zeros((), dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor, action: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.is_target:
            return self._forward(x, action)
        # d3rlpy's IQL asks the target Q-functions twice per update for the same batch (value
        # loss, then actor weights) while their weights stay put until the Polyak step: reuse the
        # output when the inputs are the same tensors and the weights' fingerprint is unchanged.
        with torch.no_grad():
            stamp = torch.stack([p.sum() for p in self.parameters()])
            memo = self._memo
            if (memo is not None and memo[0] is x and memo[1] is action and memo[2] == _versions(x, action)
                    and torch.equal(memo[3], stamp)):
                return memo[4]
            out = self._forward(x, action)
            self._memo = (x, action, _versions(x, action), stamp, out)
            return out

    def _forward(self, x: torch.Tensor, action: Optional[torch.Tensor]) -> torch.Tensor:
        n = x.shape[0]
        idx = instruction_indices(x[:, -1], self.n_instructions + len(self.extra_instructions))
        # The distinct instructions of the batch (a few) and each sample's position among them.
        uniq, inv = torch.unique(idx, return_inverse=True)
        table = self.instruction_table
        if self.extra_instructions:
            table = torch.cat([table, self.extra_table.to(table.dtype)])
        state = ((x[:, :-1] - self.state_mean) / self.state_std).clamp(-STATE_CLIP, STATE_CLIP)
        inputs = state if action is None else torch.cat([state, action], dim=1)
        if self.action_size and action is None:
            raise ValueError("this encoder takes an action")
        h = self.token_norm(self.input_proj(inputs).view(n, self.n_state_tokens, -1)) + self.token_type[1:]
        embedding = table[uniq]
        prefix = embedding + self.token_type[0]

        tracking = self.training and torch.is_grad_enabled()
        aux_terms = []
        for layer in self.layers:
            # Routing depends on the instruction only: route the distinct ones, then gather.
            logits = layer.router(embedding)
            prefix_gates, _, _ = layer.route(logits)
            gates, mask, aux = layer.route(logits[inv])
            prefix, h = layer.forward_prefixed(prefix, h, prefix_gates, gates, inv, self.routed)
            if tracking:
                aux_terms.append(aux)
                layer.usage += mask.sum(0).detach().to(layer.usage.dtype)

        parts = [prefix[inv], h.mean(dim=1), state]
        if action is not None:
            parts.append(action)
        out = F.relu(self.head(torch.cat(parts, dim=1)))
        if tracking and aux_terms and self.aux_loss_coef > 0:
            aux_loss = self.aux_loss_coef * torch.stack(aux_terms).mean()
            self.aux_sum += aux_loss.detach().to(self.aux_sum.dtype)
            self.aux_count += 1
            out = AddAuxiliaryLoss.apply(out, aux_loss)
        return out


    def add_instructions(self, texts: Sequence[str], trained: Sequence[str]) -> list[str]:
        """Embed the texts that are neither `trained` (the factory's list) nor added before; returns
        the whole vocabulary, trained first, in index order."""
        known = set(trained) | set(self.extra_instructions)
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            rows = embed_instructions(self.model_dir, new).to(self.extra_table.device, self.extra_table.dtype)
            self.extra_table = torch.cat([self.extra_table, rows])
            self.extra_instructions.extend(new)
        return [*trained, *self.extra_instructions]


class LoRAMoEEncoder(Encoder):
    """d3rlpy state encoder (policies, value functions)."""

    def __init__(self, factory: "LoRAMoEEncoderFactory", observation_dim: int):
        super().__init__()
        self.body = LoRAMoEBody(factory, observation_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.body(x)


class LoRAMoEEncoderWithAction(EncoderWithAction):
    """d3rlpy state-action encoder (Q-functions); the action enters as one more token."""

    def __init__(self, factory: "LoRAMoEEncoderFactory", observation_dim: int, action_size: int, discrete: bool):
        super().__init__()
        self.discrete, self.action_size = discrete, action_size
        self.body = LoRAMoEBody(factory, observation_dim, action_size)

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.discrete:
            action = F.one_hot(action.view(-1).long(), num_classes=self.action_size).float()
        return self.body(x, action)


@dataclass()
class LoRAMoEEncoderFactory(EncoderFactory):
    """Configuration of the LoRA-MoE encoder (serialised by d3rlpy into its `.d3` files).

    Args:
        instructions: the instruction texts; observation's last value indexes this list.
        model_dir: Hugging Face BERT-layout model folder; "" = all-MiniLM-L6-v2 from its package.
        n_layers: trailing backbone layers to run (CPU preset 1; <= 0 means all).
        n_state_tokens: tokens the state is projected to.
        n_experts, top_k, rank, alpha: LoRA experts per linear, experts per sample, LoRA rank, scale.
        lora_targets: which linears get experts (see TARGETS).
        feature_size: output features of the encoder.
        aux_loss_coef: weight of the load-balancing term.
        expert_compute: "dense" (all experts in two matmuls, gates zero where unrouted), "routed"
            (only the routed experts, grouped per expert) or "auto" (routed when top_k / n_experts
            <= ROUTED_MAX_SHARE, the measured break-even; dense otherwise).
        compute_dtype: dtype of the frozen matmuls: "auto" (bf16 where the hardware has bf16
            matmuls, see `bf16_matmul_is_fast`), "float32" or "bfloat16". Adapters stay fp32.
        state_mean, state_std: per-feature statistics used to normalise the state.
    """

    instructions: list[str] = field(default_factory=list)
    model_dir: str = ""
    n_layers: int = 1
    n_state_tokens: int = 4
    n_experts: int = 4
    top_k: int = 2
    rank: int = 8
    alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value", "intermediate", "output"])
    feature_size: int = 256
    aux_loss_coef: float = 0.01
    expert_compute: str = "auto"
    compute_dtype: str = "auto"
    state_mean: Optional[list[float]] = None
    state_std: Optional[list[float]] = None

    def validate(self, observation_dim: Optional[int] = None) -> None:
        """Raise ValueError saying what to fix when the settings cannot work."""
        problems = []
        if not self.instructions:
            problems.append("instructions is empty: list the instruction texts the observations index")
        if not 1 <= self.top_k <= self.n_experts:
            problems.append(f"top_k={self.top_k} must be between 1 and n_experts={self.n_experts}")
        if self.rank < 1 or self.n_state_tokens < 1 or self.feature_size < 1:
            problems.append("rank, n_state_tokens and feature_size must be positive")
        unknown = sorted(set(self.lora_targets) - set(TARGETS))
        if unknown:
            problems.append(f"unknown lora_targets {unknown}; choose from {sorted(TARGETS)}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            problems.append(f"compute_dtype={self.compute_dtype!r}; choose from {COMPUTE_DTYPES}")
        if self.expert_compute not in EXPERT_COMPUTE:
            problems.append(f"expert_compute={self.expert_compute!r}; choose from {EXPERT_COMPUTE}")
        if observation_dim is not None:
            if observation_dim < 2:
                problems.append(f"observations have {observation_dim} values; need state plus instruction index")
            for name in ("state_mean", "state_std"):
                values = getattr(self, name)
                if values is not None and len(values) != observation_dim - 1:
                    problems.append(f"{name} has {len(values)} values but the state has {observation_dim - 1}")
        if problems:
            raise ValueError("LoRAMoEEncoderFactory: " + "; ".join(problems))

    def create(self, observation_shape: Any) -> LoRAMoEEncoder:
        return LoRAMoEEncoder(self, _flat_dim(observation_shape))

    def create_with_action(
        self, observation_shape: Any, action_size: int, discrete_action: bool = False
    ) -> LoRAMoEEncoderWithAction:
        return LoRAMoEEncoderWithAction(self, _flat_dim(observation_shape), action_size, discrete_action)

    @staticmethod
    def get_type() -> str:
        return "lora_moe"


def _flat_dim(observation_shape: Any) -> int:
    shape = tuple(observation_shape) if isinstance(observation_shape, (tuple, list)) else (observation_shape,)
    if len(shape) != 1 or not isinstance(shape[0], int):
        raise ValueError(f"the LoRA-MoE encoder takes flat vector observations, got shape {observation_shape}")
    return shape[0]


# Registration is global in d3rlpy and asserts on duplicates (module reloads).
if LoRAMoEEncoderFactory.get_type() not in CONFIG_STORAGE[EncoderFactory].config_list:
    register_encoder_factory(LoRAMoEEncoderFactory)


def make_observations(states: np.ndarray, instruction_ids: np.ndarray) -> np.ndarray:
    """Observation vectors in the encoder's layout: state columns then the instruction index."""
    states = np.asarray(states, dtype=np.float32)
    ids = np.asarray(instruction_ids, dtype=np.float32).reshape(-1, 1)
    if states.ndim == 1:
        states = states[None, :]
    if ids.shape[0] == 1 and states.shape[0] > 1:
        ids = np.repeat(ids, states.shape[0], axis=0)
    return np.concatenate([states, ids], axis=1)


def instruction_ids(texts: Sequence[str], instructions: Sequence[str]) -> np.ndarray:
    """Index of each text in `instructions`; unknown texts are an error naming them."""
    lookup = {s: i for i, s in enumerate(instructions)}
    unknown = sorted({t for t in texts if t not in lookup}, key=str)
    if unknown:
        raise ValueError(f"instructions {unknown} are not among the policy's instructions {list(instructions)}")
    return np.fromiter((lookup[t] for t in texts), dtype=np.int64, count=len(texts))


def text_ids(algo: Any, texts: Sequence[str], instructions: Sequence[str]) -> np.ndarray:
    """Observation indices for instruction texts, any text for a LoRA-MoE policy.

    A text the policy was not trained on is embedded by the backbone now (once per process
    and text) and appended to every encoder's table: the router and the layers see its
    embedding, not the index of a training instruction. Policies without a language model
    (the MLP encoder) know only their training instructions; other texts are a ValueError.
    """
    bodies = list(moe_bodies(algo).values())
    if not bodies:
        return instruction_ids(texts, instructions)
    vocabulary = [body.add_instructions(texts, instructions) for body in bodies][0]
    return instruction_ids(texts, vocabulary)


def moe_bodies(algo: Any) -> dict[str, LoRAMoEBody]:
    """Every LoRA-MoE encoder body of a built d3rlpy algorithm, keyed by module path."""
    if algo.impl is None:
        return {}
    modules = algo.impl.modules
    found: dict[str, LoRAMoEBody] = {}
    for f in dataclasses.fields(modules):
        root = getattr(modules, f.name)
        if isinstance(root, nn.Module):
            for path, sub in root.named_modules():
                if isinstance(sub, LoRAMoEBody):
                    found[f"{f.name}.{path}" if path else f.name] = sub
    return found


def expert_usage(algo: Any) -> dict[str, list[list[int]]]:
    """Samples dispatched to each expert, per trained encoder and layer, since the last reset.

    Each sample counts once per chosen expert, so a layer's counts add up to
    top_k times the samples that passed through it with gradients. Target
    networks (never trained directly) are left out.
    """
    return {
        name: [[int(c) for c in layer.usage.tolist()] for layer in body.layers]
        for name, body in moe_bodies(algo).items()
        if not name.startswith("targ_")
    }


def pop_aux_loss(algo: Any) -> Optional[float]:
    """Mean weighted load-balancing loss since the last call (None without LoRA-MoE encoders)."""
    total, count = 0.0, 0.0
    for body in moe_bodies(algo).values():
        total += float(body.aux_sum)
        count += float(body.aux_count)
        body.aux_sum.zero_()
        body.aux_count.zero_()
    return total / count if count else None


def mark_targets(algo: Any) -> int:
    """Run the target networks' encoders without autograd; returns how many were marked.

    d3rlpy computes IQL's target Q-values with grad enabled and detaches them afterwards:
    recording that graph costs time and memory for nothing.
    """
    bodies = [body for name, body in moe_bodies(algo).items() if name.startswith("targ_")]
    for body in bodies:
        body.is_target = True
    return len(bodies)


def reset_expert_usage(algo: Any) -> None:
    """Zero the expert usage counters of every LoRA-MoE encoder."""
    for body in moe_bodies(algo).values():
        for layer in body.layers:
            layer.usage.zero_()


def adapter_state_dict(algo: Any) -> dict[str, torch.Tensor]:
    """The trained weights of all LoRA-MoE encoders (adapters, routers, projections, heads).

    The frozen backbone is not included; it is identified by its hash instead.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, body in moe_bodies(algo).items():
        for pname, param in body.named_parameters():
            tensors[f"{name}.{pname}"] = param.detach().cpu().contiguous()
        tensors[f"{name}.instruction_table"] = body.instruction_table.detach().cpu().contiguous()
    return tensors
