"""Fine-tune the embedded referee with LoRA (peft) on labelled segments.

    config = TuningConfig()
    result = train_adapter(LocalLLMBackend(), texts, labels, out_dir, config)   # adapter in out_dir
    tuned = LocalLLMBackend(adapter_dir=out_dir)                               # judges as before

The small model reads a segment's rendering but, untuned, answers nearly everything with the
same letter. A low-rank adapter on its top decoder layers teaches it to answer the question
from the rendering: the loss is the cross-entropy of the teacher's label under the model's
next-token distribution over the option letters, the very probabilities `judge` reads. The
rewards still come from the model's probabilities; nothing here replaces the model.

Teachers (`teacher_labels`): a served large model's answers when one is configured, else
weak labels from the robot's measured progress (`true_segment_progress` on the episode's own
rows, the same measure the agreement report uses, so evaluate on held-out episodes:
`split_episodes`).

Cost: the adapters sit on the last decoder layer's query, output and MLP projections. The
layers below and the last layer's keys and values do not change, so they run once per
training prompt (the question's shared prefix once for all), and an epoch computes only the
answer position of the last layer: a few hundred segments train in about the time it takes
to judge them once. Merged into the model, the adapter gives exactly the probabilities the
training computed (the test checks it), at the base model's speed.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from foundations.profile import RobotProfile
from foundations.versions import VersionStore
from quality.llm_backends import JudgeBackend, LocalLLMBackend
from quality.referee import label_episodes, true_segment_progress
from quality.referee_prompt import REFEREE_QUESTION, Question
from quality.referee_segments import segment_table

ADAPTER_FILE = "adapter_model.safetensors"  # what peft's save_pretrained writes (safetensors)
ADAPTERS = VersionStore("checkpoints", kind="referee adapter")  # beside the policy checkpoints, named referee-<robot>
_EP = "episode_id"


@dataclass(frozen=True)
class TuningConfig:
    """How the referee is fine-tuned; every field is part of the adapter's content hash."""

    rank: int = 8
    alpha: float = 16.0
    epochs: int = 40
    learning_rate: float = 2e-3
    batch_size: int = 16
    max_segments: int = 256  # training segments at most (a deterministic subset)
    holdout_share: float = 0.5  # episodes kept out of training, for evaluation
    seed: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def _rank(text: str, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:12], 16)


def split_episodes(episode_ids: list[str], config: TuningConfig = TuningConfig()) -> tuple[list[str], list[str]]:
    """(training, held out): a deterministic split by a hash of each episode id, stable as data grows."""
    ids = sorted(set(episode_ids))
    held = {i for i in ids if _rank(i, config.seed) % 1000 < config.holdout_share * 1000}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def subsample(training: pl.DataFrame, config: TuningConfig = TuningConfig()) -> pl.DataFrame:
    """At most `max_segments` labelled segments (text, label), chosen by a hash of their text."""
    rows = training.drop_nulls(["text", "label"]).unique("text", keep="first", maintain_order=True)
    order = pl.Series([_rank(t, config.seed) for t in rows["text"].to_list()], dtype=pl.UInt64)
    return rows.with_columns(order.alias("_rank")).sort("_rank").head(config.max_segments).drop("_rank")


def training_hash(base_model_id: str, pairs: pl.DataFrame, config: TuningConfig, question: Question = REFEREE_QUESTION) -> str:
    """Content hash of what an adapter learns from: base model, question, config and (text, label) pairs."""
    digest = hashlib.sha256()
    for part in (base_model_id, question.fingerprint, config.fingerprint()):
        digest.update(part.encode() + b"\n")
    for text, label in pairs.sort("text").select("text", "label").iter_rows():
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def train_adapter(
    backend: LocalLLMBackend,
    texts: list[str],
    labels: list[str],
    out_dir: Path,
    config: TuningConfig = TuningConfig(),
    question: Question = REFEREE_QUESTION,
) -> dict[str, Any]:
    """Train a LoRA adapter of `backend`'s model on (segment text, label letter) pairs; save it in `out_dir`.

    `backend` must be a base model without an adapter; it is changed in place (adapters are
    injected) and should not judge afterwards: load `LocalLLMBackend(adapter_dir=out_dir)`.
    Returns training metrics (loss per epoch, accuracy on the training pairs, seconds).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"need as many labels as texts, and at least one (got {len(texts)} and {len(labels)})")
    unknown = sorted(set(labels) - set(question.labels))
    if unknown:
        raise ValueError(f"labels {unknown} are not among the question's {list(question.labels)}")
    if backend.adapter_dir is not None:
        raise ValueError("train_adapter needs the base model; this backend already merged an adapter")
    if backend.quantize is not None:
        raise ValueError(f"train_adapter needs the float model; this backend is quantised ({backend.quantize})")
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    backend._load()
    base = backend._model
    inner = base.model
    last = len(inner.layers) - 1
    label_ids = torch.tensor(backend._label_ids(question.labels))
    target = torch.tensor([question.labels.index(label) for label in labels])

    # Everything the adapters cannot change, once: the last layer's input at the answer position
    # and its keys and values (k/v projections carry no adapter) at every position.
    layer, attn = inner.layers[last], inner.layers[last].self_attn
    heads, kv_heads, dim = base.config.num_attention_heads, base.config.num_key_value_heads, attn.head_dim
    batches = []
    with torch.no_grad():
        for idx, batch, n_prefix in backend.batches(texts, question):
            hidden, mask, positions = backend.hidden_states(batch, n_prefix, last)
            n, width = hidden.shape[:2]
            x = layer.input_layernorm(hidden)
            cos, sin = inner.rotary_emb(hidden, position_ids=positions)
            k = _rotate(attn.k_proj(x).view(n, width, kv_heads, dim).transpose(1, 2), cos, sin)
            v = attn.v_proj(x).view(n, width, kv_heads, dim).transpose(1, 2)
            keep = mask.bool()[:, None, None, :]  # padding is never attended to
            batches.append((hidden[:, -1], x[:, -1], cos[:, -1:], sin[:, -1:], k, v, keep, target[idx]))
    prepared_s = time.perf_counter() - start

    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                      target_modules=["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                      layers_to_transform=[last])  # fmt: skip
    model = get_peft_model(base, lora)
    letters = base.lm_head.weight[label_ids].detach()
    if getattr(base.lm_head, "bias", None) is not None:
        raise ValueError("train_adapter expects an output projection without bias (Llama-style models)")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)

    def logits_of(resid: Any, x: Any, cos: Any, sin: Any, k: Any, v: Any, keep: Any) -> Any:
        """The label logits, as the full model computes them at the answer position."""
        q = _rotate(attn.q_proj(x).view(len(x), 1, heads, dim).transpose(1, 2), cos, sin)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=attn.scaling,
                                                               enable_gqa=heads != kv_heads)  # fmt: skip
        h = resid + attn.o_proj(out.transpose(1, 2).reshape(len(x), heads * dim))
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return inner.norm(h) @ letters.T  # the output projection's rows of the letters only (not tuned)

    model.train()
    losses = []
    for _ in range(config.epochs):
        total = 0.0
        for b in torch.randperm(len(batches), generator=generator).tolist():
            *inputs, y = batches[b]
            loss = torch.nn.functional.cross_entropy(logits_of(*inputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        losses.append(round(total / len(texts), 4))
    model.eval()
    with torch.no_grad():
        correct = sum(int((logits_of(*inputs).argmax(-1) == y).sum()) for *inputs, y in batches)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if not (out_dir / ADAPTER_FILE).is_file():
        raise RuntimeError(f"peft wrote no {ADAPTER_FILE} into {out_dir}")
    return {
        "segments": len(texts),
        "label_counts": {label: labels.count(label) for label in question.labels},
        "tuned_layer": last,
        "epoch_loss": losses,
        "train_accuracy": round(correct / len(texts), 4),
        "prepare_s": round(prepared_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """Rotary position embedding of (batch, heads, positions, dim) by (batch, positions, dim) cos/sin."""
    import torch

    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def teacher_labels(
    df: pl.DataFrame,
    profile: RobotProfile,
    teacher: JudgeBackend | None = None,
    *,
    segment_steps: int = 20,
    question: Question = REFEREE_QUESTION,
) -> tuple[pl.DataFrame, str]:
    """(segments with `text` and `label`, teacher name): what the referee learns from.

    With a `teacher` (a served large model), its most probable letter; without one, the grade
    of the robot's measured progress over the segment (`true_segment_progress` on the
    episode's own rows: weak labels). Segments without a label (no skill, bad numbers) are dropped.
    """
    _, seg = segment_table(df, profile, segment_steps)
    if teacher is None:
        truth = true_segment_progress(df, profile, segment_steps=segment_steps, labels=question.labels)
        seg = seg.join(truth.select(_EP, "segment", pl.col("true_label").alias("label")), on=[_EP, "segment"])
        name = "measured progress (weak labels)"
    else:
        judged = label_episodes(df, teacher, profile, segment_steps=segment_steps, question=question,
                                progress_bar=False).segments  # fmt: skip
        seg = seg.join(judged.select(_EP, "segment", "label"), on=[_EP, "segment"])
        name = f"served model {teacher.model_id}"
    return seg.drop_nulls(["text", "label"]).select(_EP, "segment", "text", "label"), name


def tune_referee(
    df: pl.DataFrame,
    profile: RobotProfile,
    base: LocalLLMBackend,
    *,
    name: str,
    teacher: JudgeBackend | None = None,
    segment_steps: int = 20,
    config: TuningConfig = TuningConfig(),
    store: VersionStore = ADAPTERS,
    question: Question = REFEREE_QUESTION,
) -> tuple[dict[str, Any] | None, bool | str]:
    """The referee adapter for `df`'s training episodes: (version record, newly trained).

    Episodes are split (`split_episodes`); the training ones are labelled by the teacher and
    subsampled, and an adapter is trained and stored as the next version of `name` in
    `store` (safetensors, with the training and held-out episode ids in its record) unless
    the latest version was trained on the same content (base model, question, config,
    labelled texts): then that one is returned and nothing is trained. With nothing to learn
    from (every episode held out, or no segment the teacher could label) it returns
    (None, the reason): the base model judges.
    """
    training, held_out = split_episodes(df[_EP].unique().to_list(), config)
    if not training:
        return None, f"all {len(held_out)} episodes are held out for evaluation; nothing to fine-tune on"
    labelled, teacher_name = teacher_labels(df.filter(pl.col(_EP).is_in(training)), profile, teacher,
                                            segment_steps=segment_steps, question=question)  # fmt: skip
    pairs = subsample(labelled, config)
    if pairs.is_empty():
        return None, f"{teacher_name} labelled no segment of the {len(training)} training episodes"
    content = training_hash(base.model_id, pairs, config, question)

    def write(folder: Path, record: dict[str, Any]) -> dict[str, Any]:
        return {"training": train_adapter(base, pairs["text"].to_list(), pairs["label"].to_list(), folder, config,
                                          question)}  # fmt: skip

    fields = {"base_model": base.model_id, "teacher": teacher_name, "segment_steps": segment_steps,
              "config": asdict(config), "training_episodes": training, "held_out_episodes": held_out}  # fmt: skip
    return store.commit(name, content, write, fields=fields)
