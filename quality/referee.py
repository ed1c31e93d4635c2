"""The referee: an LLM that labels episode segments with graded, dense rewards (LARM's "referee RL").

    profile = load_profile(mapping.robot)     # foundations.profile: what the robot's features mean
    labels = label_episodes(episodes, LocalLLMBackend(), profile)
    labels.steps      # episode_id, step, segment, referee_reward (float32)
    labels.segments   # episode_id, segment, start_step, end_step, n_steps, label, probs, reward, text, ...
    labels.stats      # calls, cache_hits, prompt_tokens, seconds, ...
    referee_agreement(labels.segments, episodes, profile)   # how well the labels follow true progress

Every function takes the episode table(s) first, then (label_episodes) the backend, then the
robot profile.
Each segment (K control steps, `quality.referee_segments`) is rendered as text from what the
profile declares (base pose, posture, end effector, target, and the skill's measure) and judged
with one multiple-choice question (`quality.referee_prompt`): A right action and good
outcome (+1.0), B right action without visible outcome (+0.3), C wrong action without harm
(-0.3), D wrong action with harm (-1.0). The segment's reward is the expected scalar under
the label probabilities, and its label the most probable one.

Per-step rewards: a segment's reward is spread evenly over its steps (reward / n_steps),
so the return of an episode is the sum of its segments' rewards whatever the segment
length, and a short last segment weighs no more than a full one.

Judgements are cached by (model id, prompt template, hash of the segment text): a run over
segments judged before asks the model nothing.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl
from tqdm import tqdm

from foundations.profile import RobotProfile
from quality.llm_backends import JudgeBackend, RefereeBackendError
from quality.referee_cache import JudgementCache
from quality.referee_prompt import LABEL_REWARDS, PROMPT_TEMPLATE_VERSION, REFEREE_QUESTION, Question, check_label_rewards
from quality.referee_segments import segment_features, segment_table, step_features

_EP = "episode_id"
_PROB_TOLERANCE = 1e-3


class RefereeLabels(NamedTuple):
    """What `label_episodes` returns; unpacks as (steps, segments, stats)."""

    steps: pl.DataFrame
    segments: pl.DataFrame
    stats: dict[str, Any]


def template_key(question: Question = REFEREE_QUESTION) -> str:
    """The prompt-template part of the cache key: version plus a hash of the question."""
    return f"{PROMPT_TEMPLATE_VERSION}:{question.fingerprint[:16]}"


def _check_probs(probs: dict[str, float], labels: tuple[str, ...], model_id: str) -> dict[str, float]:
    values = [probs.get(label) for label in labels]
    if set(probs) != set(labels) or any(v is None or not np.isfinite(v) or v < 0 for v in values):
        raise RefereeBackendError(f"{model_id} returned {probs}, not probabilities of the labels {list(labels)}")
    if abs(sum(values) - 1.0) > _PROB_TOLERANCE:
        raise RefereeBackendError(f"{model_id} returned probabilities summing to {sum(values):.4f}, not 1")
    return {label: float(probs[label]) for label in labels}


def label_episodes(
    df: pl.DataFrame,
    backend: JudgeBackend,
    profile: RobotProfile,
    *,
    segment_steps: int = 20,
    batch_size: int = 16,
    progress_bar: bool = True,
    label_rewards: dict[str, float] | None = None,
    question: Question = REFEREE_QUESTION,
    cache: JudgementCache | Literal[False] | None = None,
) -> RefereeLabels:
    """Judge every `segment_steps`-step segment of every episode and turn the labels into rewards.

    `df` is the canonical episode table, `backend` the model that judges, `profile` the table's
    robot profile (the features it declares must be columns of `df`; it says how segments are
    described). `label_rewards` maps the question's labels to scalars (default
    `LABEL_REWARDS`). `cache` is the judgement store
    (default: the data root's; False: none). Segments whose numbers are missing or not
    finite are not judged: they keep a null label and reward and say why in
    `invalid_reason`, and their steps get a null `referee_reward`.
    """
    start = time.perf_counter()
    rewards = check_label_rewards(label_rewards if label_rewards is not None else LABEL_REWARDS, question)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = JudgementCache() if cache is None else (cache or None)
    template = template_key(question)
    labels = question.labels

    rows, seg = segment_table(df, profile, segment_steps)
    texts: list[str | None] = seg["text"].to_list()
    hashes = [hashlib.sha256(t.encode()).hexdigest() if t is not None else None for t in texts]  # per segment
    seg = seg.with_columns(pl.Series("content_hash", hashes, dtype=pl.String))
    text_of = {h: t for h, t in zip(hashes, texts) if h is not None}
    unique = list(text_of)

    found = store.get(backend.model_id, template, unique) if store is not None and unique else {}
    cached_before = set(found)
    pending = sorted((h for h in unique if h not in found), key=lambda h: len(text_of[h]))  # similar lengths batch well
    tokens_before = backend.prompt_tokens
    chunks = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    for chunk in tqdm(chunks, desc="referee", unit="batch", disable=not progress_bar or not chunks):
        answers = backend.judge([text_of[h] for h in chunk], question)
        if len(answers) != len(chunk):
            raise RefereeBackendError(f"{backend.model_id} answered {len(answers)} of {len(chunk)} prompts")
        judged = {h: _check_probs(p, labels, backend.model_id) for h, p in zip(chunk, answers)}
        if store is not None:
            store.put(backend.model_id, template, judged)  # per batch: an interrupted run keeps its progress
        found.update(judged)

    table = pl.DataFrame(
        {"content_hash": list(found), **{label: [found[h][label] for h in found] for label in labels}},
        schema={"content_hash": pl.String, **{label: pl.Float64 for label in labels}},
    )
    expected = pl.sum_horizontal([pl.col(label) * rewards[label] for label in labels])
    best = pl.concat_list(labels).list.arg_max()
    seg = seg.join(table, on="content_hash", how="left").with_columns(
        pl.when(pl.col(labels[0]).is_not_null()).then(best.replace_strict(dict(enumerate(labels)), return_dtype=pl.String))
        .alias("label"),
        pl.struct([pl.col(label).cast(pl.Float32) for label in labels]).alias("probs"),
        expected.cast(pl.Float32).alias("reward"),
    )  # fmt: skip
    has_label = pl.col("label").is_not_null()  # sum_horizontal would turn a missing judgement into 0
    seg = seg.with_columns(pl.when(has_label).then(pl.col("probs")).alias("probs"), pl.when(has_label).then(pl.col("reward")))
    segments = seg.select(
        _EP, "segment", "start_step", "end_step", "n_steps", "instruction", "label", "probs", "reward",
        "text", "content_hash", "invalid_reason",
    )  # fmt: skip
    steps = (
        rows.select(_EP, "step", "segment")
        .join(segments.select(_EP, "segment", "reward", "n_steps"), on=[_EP, "segment"], how="left")
        .select(_EP, "step", "segment", (pl.col("reward") / pl.col("n_steps")).cast(pl.Float32).alias("referee_reward"))
    )

    valid = [h for h in hashes if h is not None]
    seconds = time.perf_counter() - start
    stats = {
        "model_id": backend.model_id,
        "template": template,
        "episodes": segments[_EP].n_unique(),
        "segments": segments.height,
        "judged": len(valid),
        "invalid": segments.height - len(valid),
        "unique_prompts": len(unique),
        "calls": len(pending),
        "cache_hits": sum(h in cached_before for h in valid),
        "prompt_tokens": backend.prompt_tokens - tokens_before,
        "seconds": round(seconds, 3),
        "label_counts": dict(segments["label"].drop_nulls().value_counts().iter_rows()),
    }
    return RefereeLabels(steps, segments, stats)


# ---------------------------------------------------------------------------------------------
# Truth and agreement: how well the referee follows the progress measured from the declared features.


@dataclass(frozen=True)
class TruthThresholds:
    """Graded labels from true progress, as a fraction of the skill's target per second.

    The defaults assume a skill's target is what a good operator reaches in about 10 s, i.e.
    0.1 of the target per second. A: at least `good` (half that pace); B: at least `visible`;
    D: fell in the segment (robots with a declared posture), or below `harm` (moved or turned
    the wrong way); C: the rest. A segment that starts with the skill's target already reached
    (an arm holding at its goal) is A unless it falls or loses ground faster than `harm`.
    """

    good: float = 0.05
    visible: float = 0.01
    harm: float = -0.025


def true_segment_progress(
    df: pl.DataFrame,
    profile: RobotProfile,
    *,
    segment_steps: int = 20,
    thresholds: TruthThresholds = TruthThresholds(),
    labels: tuple[str, ...] = REFEREE_QUESTION.labels,
) -> pl.DataFrame:
    """Per segment: true progress toward the instruction's skill, from the profile's declared features.

    The skill's measure (`foundations.progress`: forward metres along the episode's initial
    heading, signed yaw, share of the starting distance to the target closed, bearing swept)
    changes over the segment by `task_change`; `progress` is that change divided by the
    skill's target (so toward the goal is positive for every skill). `true_label` grades it by
    pace (`TruthThresholds`), null for instructions without a skill, with `truth_reason`
    saying so.
    """
    seg = segment_features(step_features(df, profile, segment_steps), profile)
    a, b, c, d = labels
    seg = seg.with_columns((pl.col("task_change") / pl.col("target")).alias("progress"))  # share of the target
    rate = pl.col("progress") / pl.col("duration_s").clip(lower_bound=1e-6)
    graded = (
        pl.when(pl.col("progress").is_null()).then(None)
        .when(pl.col("fell") | (rate < thresholds.harm)).then(pl.lit(d))
        .when((rate >= thresholds.good) | (pl.col("progress_before") / pl.col("target") >= 1)).then(pl.lit(a))
        .when(rate >= thresholds.visible).then(pl.lit(b))
        .otherwise(pl.lit(c))
    )  # fmt: skip
    reason = (
        pl.when(pl.col("invalid_reason").is_not_null()).then(pl.col("invalid_reason"))
        .when(pl.col("measure").is_null())
        .then(pl.format(f"no skill named \"{{}}\" in robot profile {profile.name!r}", pl.col("instruction")))
        .when(pl.col("progress").is_null()).then(pl.format("{} cannot be measured here", pl.col("measure")))
    )  # fmt: skip
    return seg.with_columns(graded.alias("true_label"), reason.alias("truth_reason")).select(
        _EP, "segment", "start_step", "end_step", "instruction", "duration_s", "fell", "progress", "true_label", "truth_reason"
    )


def referee_agreement(
    segments: pl.DataFrame,
    truth: pl.DataFrame,
    profile: RobotProfile,
    *,
    segment_steps: int = 20,
    thresholds: TruthThresholds = TruthThresholds(),
    labels: tuple[str, ...] = REFEREE_QUESTION.labels,
) -> dict[str, Any]:
    """Agreement of the referee's segments (from `label_episodes`) with true progress.

    `truth` is the episode table the segments came from (true progress is measured from the
    features `profile` declares; see `true_segment_progress`) or that function's output.
    Returns:
    - `voc`: value-order correlation as in GVL, here the Spearman correlation between
      predicted progress (cumulative referee reward) and true cumulative progress at the
      segment ends, averaged over episodes (`voc_episodes` counts those where it is defined);
      `voc_time_baseline` is the same for a referee that adds a constant each segment
      (progress = elapsed time), the bar a useful referee must clear;
    - `spearman_segment`: Spearman between segment reward and segment progress over all
      segments (does the referee tell good segments from bad ones);
    - `accuracy`, `balanced_accuracy`, `majority_accuracy` (always answering the most
      common true label), `confusion` (true label -> predicted label -> count).
    """
    if "true_label" not in truth.columns:
        truth = true_segment_progress(truth, profile, segment_steps=segment_steps, thresholds=thresholds,
                                      labels=labels)  # fmt: skip
    truth_cols = [_EP, "segment", pl.col("start_step").alias("true_start"), "progress", "true_label"]
    truth_cols += ["truth_reason"] if "truth_reason" in truth.columns else []
    joined = segments.select(_EP, "segment", "start_step", "label", "reward").join(
        truth.select(truth_cols), on=[_EP, "segment"], how="inner"
    )
    if joined.height and (joined["start_step"] != joined["true_start"]).any():
        raise ValueError("segments and truth cut episodes differently; pass the segment_steps used by label_episodes")
    both = joined.filter(pl.col("reward").is_not_null() & pl.col("progress").is_not_null()).sort(_EP, "segment")
    out: dict[str, Any] = {"segments": both.height, "episodes": both[_EP].n_unique(),
                           "left_out": segments.height - both.height}  # fmt: skip
    if "truth_reason" in joined.columns:  # why segments could not be compared, never silently
        reasons = joined.filter(pl.col("reward").is_null() | pl.col("progress").is_null())
        reasons = reasons.select(pl.col("truth_reason").fill_null("the referee did not judge it"))
        out["left_out_reasons"] = dict(reasons.to_series().value_counts().iter_rows())
    if both.height == 0:
        return out | {"voc": None, "spearman_segment": None, "accuracy": None}

    cum = both.with_columns(
        pl.col("reward").cum_sum().over(_EP).alias("pred_cum"),
        pl.col("progress").cum_sum().over(_EP).alias("true_cum"),
        pl.int_range(1, pl.len() + 1).over(_EP).cast(pl.Float64).alias("elapsed"),
    )
    per_episode = (
        cum.group_by(_EP)
        .agg(
            pl.corr("pred_cum", "true_cum", method="spearman").alias("voc"),
            pl.corr("elapsed", "true_cum", method="spearman").alias("voc_time"),
        )
        .with_columns(pl.col("voc", "voc_time").fill_nan(None))
    )

    def mean(col: str) -> float | None:
        value = per_episode[col].drop_nulls().mean()
        return None if value is None else round(float(value), 4)

    spearman = both.select(pl.corr("reward", "progress", method="spearman")).item()
    graded = both.filter(pl.col("true_label").is_not_null() & pl.col("label").is_not_null())
    confusion = {
        t: {p: int(graded.filter((pl.col("true_label") == t) & (pl.col("label") == p)).height) for p in labels}
        for t in labels
    }
    recalls = [confusion[t][t] / sum(confusion[t].values()) for t in labels if sum(confusion[t].values())]
    true_counts = {t: sum(confusion[t].values()) for t in labels}
    n = graded.height
    return out | {
        "voc": mean("voc"),
        "voc_episodes": int(per_episode["voc"].drop_nulls().len()),
        "voc_time_baseline": mean("voc_time"),
        "spearman_segment": None if spearman is None or np.isnan(spearman) else round(float(spearman), 4),
        "accuracy": round(sum(confusion[t][t] for t in labels) / n, 4) if n else None,
        "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else None,
        "majority_accuracy": round(max(true_counts.values()) / n, 4) if n else None,
        "true_label_counts": true_counts,
        "confusion": confusion,
    }
