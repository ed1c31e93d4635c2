"""The LoRA-MoE encoder: plumbing on a tiny random BERT, and IQL with the real MiniLM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from d3rlpy.algos import IQLConfig

from training.backbone import _load, resolve_model_dir
from training.lora_moe import (
    LoRAMoEEncoderFactory,
    expert_usage,
    instruction_ids,
    make_observations,
    moe_bodies,
)
from training.offline_rl import TrainConfig, train
from training_tables import INSTRUCTIONS, episode_table, tiny_bert_dir

STATE_DIM = 27
FROZEN = {"q_w", "q_b", "k_w", "k_b", "v_w", "v_b", "ao_w", "ao_b", "ln1_w", "ln1_b", "i_w", "i_b", "o_w", "o_b",
          "ln2_w", "ln2_b"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return tiny_bert_dir(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(autouse=True)
def one_thread():
    # The test machine is shared: two OpenMP threads wait on each other there.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def factory(model_dir: str, **kw) -> LoRAMoEEncoderFactory:
    kw.setdefault("feature_size", 16)
    return LoRAMoEEncoderFactory(instructions=INSTRUCTIONS, model_dir=model_dir, n_layers=2, **kw)


def observations(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    obs = make_observations(rng.normal(size=(n, STATE_DIM)), rng.integers(0, len(INSTRUCTIONS), n))
    return torch.from_numpy(obs)


def test_frozen_layer_reproduces_the_hf_bert_layer(tiny_dir):
    enc = factory(tiny_dir, compute_dtype="float32").create((STATE_DIM + 1,))
    half = factory(tiny_dir, compute_dtype="bfloat16").create((STATE_DIM + 1,))
    model, _ = _load(resolve_model_dir(tiny_dir))
    hidden = torch.randn(5, 6, 32)
    gates = torch.zeros(5, 4)
    for ours, index in zip(enc.body.layers, enc.body.layer_indices):
        ref = model.encoder.layer[index](hidden)
        ref = ref[0] if isinstance(ref, tuple) else ref
        # Fresh adapters have B = 0, so the layer must equal the pretrained one exactly.
        torch.testing.assert_close(ours(hidden, gates, False), ref, rtol=1e-5, atol=1e-5)
    for ours, index in zip(half.body.layers, half.body.layer_indices):
        ref = model.encoder.layer[index](hidden)
        ref = ref[0] if isinstance(ref, tuple) else ref
        # bf16 frozen matmuls (8-bit mantissa) after fp32 layer norms: close, not equal.
        torch.testing.assert_close(ours(hidden, gates, False), ref, rtol=0.05, atol=0.05)


def test_router_picks_top_k_and_gates_sum_to_one(tiny_dir):
    layer = factory(tiny_dir, n_experts=5, top_k=2).create((STATE_DIM + 1,)).body.layers[0]
    logits = torch.randn(64, 5)
    gates, mask, aux = layer.route(logits)
    assert torch.equal((gates > 0).sum(1), torch.full((64,), 2))
    torch.testing.assert_close(gates.sum(1), torch.ones(64))
    chosen = mask.bool()
    # Every chosen expert has a logit at least as large as every unchosen one.
    assert torch.all(logits.masked_fill(~chosen, math.inf).min(1).values >= logits.masked_fill(chosen, -math.inf).max(1).values)
    assert torch.isfinite(aux) and aux > 0


def test_load_balancing_loss_penalises_collapse(tiny_dir):
    layer = factory(tiny_dir, n_experts=4, top_k=1).create((STATE_DIM + 1,)).body.layers[0]
    balanced = torch.eye(4).repeat(16, 1) * 5.0  # each expert gets a quarter of the samples
    collapsed = torch.tensor([[5.0, 0, 0, 0]]).repeat(64, 1)
    _, _, aux_balanced = layer.route(balanced)
    _, _, aux_collapsed = layer.route(collapsed)
    assert 0 < aux_balanced < 1.0 + 1e-6
    assert aux_collapsed > 2.0 * aux_balanced


def test_base_weights_are_frozen_buffers_and_adapters_train(tiny_dir):
    enc = factory(tiny_dir).create_with_action((STATE_DIM + 1,), 8)
    param_names = {n.rsplit(".", 1)[-1] for n, _ in enc.named_parameters()}
    buffer_names = {n.rsplit(".", 1)[-1] for n, _ in enc.named_buffers()}
    assert FROZEN <= buffer_names and not FROZEN & param_names
    assert not any(k.rsplit(".", 1)[-1] in FROZEN for k in enc.state_dict())  # not persisted either
    frozen_before = {n: b.clone() for n, b in enc.named_buffers() if n.rsplit(".", 1)[-1] in FROZEN}
    lora_before = {n: p.detach().clone() for n, p in enc.named_parameters() if ".experts." in n or ".router." in n}

    optim = torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(2):  # B starts at zero, so A only moves from the second step on
        optim.zero_grad()
        enc(observations(32), torch.rand(32, 8) * 2 - 1).pow(2).mean().backward()
        optim.step()

    for name, before in frozen_before.items():
        assert torch.equal(dict(enc.named_buffers())[name], before), name
    params = dict(enc.named_parameters())
    changed = [n for n, before in lora_before.items() if not torch.equal(params[n], before)]
    assert any(n.endswith(".A") for n in changed) and any(n.endswith(".B") for n in changed)
    assert any(".router." in n for n in changed)


def test_aux_loss_reaches_the_router_through_any_loss(tiny_dir):
    enc = factory(tiny_dir, aux_loss_coef=0.5).create((STATE_DIM + 1,))
    # A task loss of exactly zero: all router gradient must come from the load-balancing term.
    (enc(observations(32)).sum() * 0.0).backward()
    assert enc.body.layers[0].router.weight.grad.abs().sum() > 0
    enc.zero_grad()
    no_aux = factory(tiny_dir, aux_loss_coef=0.0).create((STATE_DIM + 1,))
    (no_aux(observations(32)).sum() * 0.0).backward()
    assert no_aux.body.layers[0].router.weight.grad is None or no_aux.body.layers[0].router.weight.grad.abs().sum() == 0


def test_expert_usage_counts_add_up(tiny_dir):
    enc = factory(tiny_dir, top_k=2).create((STATE_DIM + 1,))
    enc(observations(40)).sum().backward()
    enc(observations(24, seed=1)).sum().backward()
    with torch.no_grad():  # probes, targets and evaluation do not count
        enc(observations(100))
    for layer in enc.body.layers:
        assert layer.usage.sum().item() == (40 + 24) * 2
        assert layer.usage.min() >= 0


def test_dense_and_routed_expert_compute_agree(tiny_dir):
    torch.manual_seed(0)
    dense = factory(tiny_dir, expert_compute="dense").create((STATE_DIM + 1,))
    routed = factory(tiny_dir, expert_compute="routed").create((STATE_DIM + 1,))
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(0, 0.1)  # non-zero B so the experts contribute
    routed.load_state_dict(dense.state_dict())
    x = observations(48)
    out_d, out_r = dense(x), routed(x)
    torch.testing.assert_close(out_d, out_r, rtol=1e-4, atol=1e-5)
    out_d.sum().backward()
    out_r.sum().backward()
    gd = dense.body.layers[0].experts["intermediate"].A.grad
    gr = routed.body.layers[0].experts["intermediate"].A.grad
    torch.testing.assert_close(gd, gr, rtol=1e-4, atol=1e-5)
    # "auto" computes only routed experts where that measured cheaper (a small share routed).
    assert not factory(tiny_dir, n_experts=4, top_k=2).create((STATE_DIM + 1,)).body.routed
    assert factory(tiny_dir, n_experts=8, top_k=1).create((STATE_DIM + 1,)).body.routed


def test_instruction_index_survives_d3rlpy_probe_and_bad_values(tiny_dir):
    enc = factory(tiny_dir).create((STATE_DIM + 1,))
    probe = torch.rand(2, STATE_DIM + 1)  # what d3rlpy's compute_output_size feeds
    assert enc(probe).shape == (2, 16)
    x = observations(4)
    x[:, -1] = torch.tensor([-3.0, 99.0, float("nan"), 1.2])
    with torch.no_grad():
        out = enc(x)
        clean = x.clone()
        clean[:, -1] = torch.tensor([0.0, 2.0, 0.0, 1.0])
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, enc(clean))


def test_instruction_ids_refuse_unknown_text():
    assert instruction_ids(["walk forward", "turn left"], INSTRUCTIONS).tolist() == [2, 0]
    with pytest.raises(ValueError, match="jump"):
        instruction_ids(["jump"], INSTRUCTIONS)


def test_factory_validation_and_d3rlpy_serialisation(tiny_dir):
    with pytest.raises(ValueError, match="top_k=5"):
        factory(tiny_dir, top_k=5).create((STATE_DIM + 1,))
    with pytest.raises(ValueError, match="instructions is empty"):
        LoRAMoEEncoderFactory(model_dir=tiny_dir).create((STATE_DIM + 1,))
    f = factory(tiny_dir, rank=4, state_mean=[0.5] * STATE_DIM, state_std=[2.0] * STATE_DIM)
    restored = IQLConfig.deserialize(IQLConfig(actor_encoder_factory=f).serialize()).actor_encoder_factory
    assert restored == f


def test_iql_trains_with_the_real_minilm_backbone():
    table = episode_table(n_episodes=6, steps=20)
    config = TrainConfig(  # the transformer on every network (the GPU preset's way): one trunk shared by six
        algorithm="iql", n_steps=20, n_steps_per_epoch=10, batch_size=16, eval_episodes=2, num_threads=1,
        action_bounds=(-1.0, 1.0), critic_encoder="same",
    )
    result = train(table, config, progress=False)
    assert result.curve["epoch"].to_list() == [1, 2]
    for column in ("critic_loss", "actor_loss", "v_loss", "td_error", "initial_state_value", "aux_loss"):
        values = result.curve[column].to_numpy()
        assert np.isfinite(values).all(), column
    bodies = moe_bodies(result.algo)
    assert len(bodies) == 6  # policy, two critics, two targets, value function
    body = bodies["policy._encoder.body"]
    assert body.instruction_table.shape == (3, 384) and len(body.layers) == 1
    # One frozen trunk in memory, shared by all six encoders.
    assert len({b.layers[0].i_w.data_ptr() for b in bodies.values()}) == 1
    # Base weights are MiniLM's last layer, untouched by training.
    model, _ = _load(resolve_model_dir(""))
    assert torch.equal(body.layers[0].q_w, model.encoder.layer[5].attention.self.query.weight.detach())
    # The actor backpropagates through its encoder once per update: 20 updates x 16 samples x top-2.
    usage = expert_usage(result.algo)
    assert sum(usage["policy._encoder.body"][0]) == 20 * 16 * 2
    assert all(sum(layer) > 0 for layers in usage.values() for layer in layers)
    assert result.seconds_per_update > 0


def test_prefixed_layer_equals_full_attention_with_a_blind_prefix(tiny_dir, monkeypatch):
    """The prefix path (instruction once per distinct instruction) is the layer on the sequence
    [instruction, sample tokens] under a mask where the instruction sees only itself."""
    torch.manual_seed(0)
    enc = factory(tiny_dir, compute_dtype="float32").create((STATE_DIM + 1,))
    layer = enc.body.layers[0]
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.1)
    prefix, tokens = torch.randn(2, 32), torch.randn(5, 3, 32)
    inv = torch.tensor([0, 1, 1, 0, 1])
    gates, _, _ = layer.route(layer.router(prefix))
    out_prefix, out_tokens = layer.forward_prefixed(prefix, tokens, gates, gates[inv], inv, False)
    # Reference: each sample's full sequence through the plain layer, attention masked by hand.
    seq = torch.cat([prefix[inv].unsqueeze(1), tokens], dim=1)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[0, 1:] = False
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v: real_sdpa(q, k, v, attn_mask=mask))
    ref = layer(seq, gates[inv], False)
    monkeypatch.undo()
    torch.testing.assert_close(out_tokens, ref[:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_prefix[inv], ref[:, 0], rtol=1e-4, atol=1e-5)


def test_target_networks_run_without_autograd_and_reuse_identical_calls(tiny_dir):
    enc = factory(tiny_dir).create_with_action((STATE_DIM + 1,), 8)
    enc.body.is_target = True
    x, a = observations(8), torch.rand(8, 8)
    first = enc(x, a)
    assert not first.requires_grad
    assert enc(x, a) is first  # same tensors, same weights: the memo
    assert enc(x.clone(), a) is not first
    with torch.no_grad():
        enc.body.head.bias.add_(1.0)  # as a Polyak step does, through .data
    again = enc(x, a)
    assert again is not first and not torch.equal(again, first)


def test_any_instruction_text_is_embedded_on_the_fly(tiny_dir):
    from training.lora_moe import text_ids

    config = TrainConfig(algorithm="bc", n_steps=4, n_steps_per_epoch=2, batch_size=8, num_threads=1,
                         action_bounds=(-1.0, 1.0),
                         encoder=LoRAMoEEncoderFactory(model_dir=tiny_dir, n_layers=1, feature_size=16))
    result = train(episode_table(n_episodes=4, steps=10), config, progress=False)
    algo, known = result.algo, result.instructions
    ids = text_ids(algo, [known[1], "stroll ahead please", known[0], "stroll ahead please"], known)
    assert ids.tolist() == [1, len(known), 0, len(known)]
    body = next(iter(moe_bodies(algo).values()))
    assert body.extra_table.shape[0] == 1 and "extra_table" not in body.state_dict()
    states = np.random.default_rng(0).normal(size=(2, STATE_DIM)).astype(np.float32)
    new = algo.predict(make_observations(states, [len(known)] * 2))
    old = algo.predict(make_observations(states, [0] * 2))
    assert np.isfinite(new).all() and not np.allclose(new, old)  # a different embedding, not index 0 clamped
    # An MLP policy has no language model: an unknown text is a clear error, not a silent index.
    mlp = train(episode_table(n_episodes=4, steps=10), TrainConfig(
        algorithm="bc", n_steps=2, n_steps_per_epoch=1, batch_size=8, encoder_type="mlp", action_bounds=(-1.0, 1.0)),
        progress=False)
    with pytest.raises(ValueError, match="stroll"):
        text_ids(mlp.algo, ["stroll ahead please"], mlp.instructions)
