"""Small synthetic canonical episode tables for the training tests (foundations.schema layout)."""
from __future__ import annotations

import numpy as np
import polars as pl

from foundations.schema import ACTION, POLARS_SCHEMA, STATE

INSTRUCTIONS = ["turn left", "turn right", "walk forward"]


def episode_table(
    n_episodes: int = 9, steps: int = 24, state_dim: int = 27, action_dim: int = 8, seed: int = 0
) -> pl.DataFrame:
    """Episodes whose actions depend on state and instruction; every third one ends in a fall.

    The reward is higher the closer the action is to an instruction-specific
    linear controller, so there is something to learn.
    """
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    episode = np.repeat(np.arange(n_episodes), steps)
    step = np.tile(np.arange(steps), n_episodes)
    instr = episode % len(INSTRUCTIONS)
    states = rng.normal(size=(n, state_dim)).astype(np.float32)
    gains = rng.normal(scale=0.3, size=(len(INSTRUCTIONS), action_dim, state_dim)).astype(np.float32)
    target = np.tanh(np.einsum("nas,ns->na", gains[instr], states))
    actions = np.clip(target + rng.normal(scale=0.3, size=target.shape), -1, 1).astype(np.float32)
    reward = (1.0 - np.square(actions - target).mean(axis=1)).astype(np.float32)
    is_last = step == steps - 1
    terminal = is_last & (episode % 3 == 0)
    ids = np.array([f"ep-{e:03d}" for e in range(n_episodes)])[episode]
    return pl.DataFrame(
        {
            "episode_id": ids,
            "step": step.astype(np.int32),
            "timestamp": step * 0.05,
            STATE: pl.Series(STATE, states).cast(pl.List(pl.Float32)),
            ACTION: pl.Series(ACTION, actions).cast(pl.List(pl.Float32)),
            "reward": reward,
            "is_first": step == 0,
            "is_last": is_last,
            "is_terminal": terminal,
            "language_instruction": np.array(INSTRUCTIONS)[instr],
            "robot_id": "ant-0",
            "source": "synthetic",
            "source_file": "synthetic.mcap",
            "source_sha256": "0" * 64,
        }
    ).cast(POLARS_SCHEMA)  # type: ignore[arg-type]


def tiny_bert_dir(path) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer, saved under `path`."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from training.backbone import default_model_dir

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(default_model_dir())).save_pretrained(path)
    return str(path)
