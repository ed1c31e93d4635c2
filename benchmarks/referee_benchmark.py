"""Referee benchmark: throughput, cache, and agreement with true progress.

In one process, on the same prompts and the same loaded model:
  * throughput: prompts/s judged one at a time against batched (left padding after the
    shared prefix), and batched without sharing the prefix;
  * cache: `label_episodes` on an empty judgement cache against the same call again
    (nothing new: the model is asked nothing);
  * agreement: value-order correlation (Spearman of cumulative referee reward against true
    cumulative progress, per episode) beside the time baseline (a referee that adds a
    constant per segment), per-segment Spearman, graded-label accuracy beside always
    answering the most common true label.

Episodes come from a simulated fleet (simulator.embodiments, ingested like real logs with
the fleet's source mapping), from a Parquet file of the canonical table (--episodes, read
with --embodiment's robot profile), or, with --kinematic, from a kinematic stand-in for the
quadruped (straight-line motion of graded quality, no physics) for when the simulator is not
available. The robot profile (datasets/robots/) says how segments are described and what
true progress is.

    python benchmarks/referee_benchmark.py --sim 6 --prompts 16 [--embodiment ant]
    python benchmarks/referee_benchmark.py --sim 12 --prompts 48 --threads 2 --throughput-only --int8
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from foundations.profile import RobotProfile, load_profile
from foundations.schema import POSE, STATE
from quality.llm_backends import LocalLLMBackend
from quality.referee import label_episodes, referee_agreement
from quality.referee_cache import JudgementCache
from quality.referee_segments import segment_table

RATE_HZ = 20.0


def embodiment_profile(embodiment: str) -> RobotProfile:
    """The robot profile the simulated embodiment's logs are read with."""
    from simulator.embodiments import get_embodiment

    return load_profile(get_embodiment(embodiment).robot_profile)


def simulated_episodes(embodiment: str, n: int, seed: int, steps: int) -> pl.DataFrame:
    """`n` episodes of a simulated fleet (graded operators), written as MCAP and ingested with its mapping."""
    from foundations.ingest.ingest import ingest_files
    from foundations.ingest.mapping import load_mapping
    from simulator.embodiments import get_embodiment

    fleet = get_embodiment(embodiment)
    with tempfile.TemporaryDirectory() as tmp:
        fleet.simulate_fleet(n, Path(tmp), seed=seed, fault_rate=0.0, episode_steps=steps)
        result = ingest_files(sorted(Path(tmp).rglob("*.mcap")), load_mapping(fleet.source), progress=False)
    return result.episodes


def kinematic_episodes(n: int, seed: int, steps: int) -> pl.DataFrame:
    """Stand-in quadruped episodes (the `ant` profile's layout): per 1 s stretch, an operator of
    graded quality moves toward the skill's goal at full pace, hesitates, goes the wrong way, or
    jitters; poor ones may fall."""
    rng = np.random.default_rng(seed)
    skills = {"walk forward": (0.3, 0.0), "turn left": (0.0, 0.4), "turn right": (0.0, -0.4)}
    # operator -> probabilities of (good, hesitate, wrong, jitter) per stretch, chance of a fall
    operators = {"expert": ([0.9, 0.1, 0.0, 0.0], 0.0), "medium": ([0.6, 0.3, 0.1, 0.0], 0.0),
                 "poor": ([0.3, 0.3, 0.3, 0.1], 0.3), "random": ([0.0, 0.2, 0.1, 0.7], 0.2)}  # fmt: skip
    frames = []
    for i in range(n):
        skill = list(skills)[i % 3]
        operator = list(operators)[(i // 3) % 4]
        mix, p_fall = operators[operator]
        speed, yaw_rate = skills[skill]
        mode = np.repeat(rng.choice(4, size=math.ceil(steps / RATE_HZ), p=mix), int(RATE_HZ))[:steps]
        scale = np.select([mode == 0, mode == 1, mode == 2], [1.0, 0.1, -0.7], default=0.0)
        v = speed * scale + (mode == 3) * rng.normal(0, 0.1, steps)
        w = yaw_rate * scale + (mode == 3) * rng.normal(0, 0.3, steps)
        yaw = rng.uniform(-math.pi, math.pi) + np.cumsum(w) / RATE_HZ
        x, y = np.cumsum(v * np.cos(yaw)) / RATE_HZ, np.cumsum(v * np.sin(yaw)) / RATE_HZ
        z = np.full(steps, 0.55)
        n_steps = steps
        if rng.random() < p_fall:
            n_steps = int(rng.integers(steps // 3, steps))
            z[max(0, n_steps - 10) : n_steps] = np.linspace(0.55, 0.15, min(10, n_steps))
        quat = np.stack([np.cos(yaw / 2), np.zeros(steps), np.zeros(steps), np.sin(yaw / 2)], 1)
        state = np.concatenate([z[:, None], quat, np.zeros((steps, 22))], 1)[:n_steps]
        pose = np.stack([x, y, (yaw + math.pi) % (2 * math.pi) - math.pi], 1)[:n_steps]
        fell = n_steps < steps  # a fall ends the episode as terminal; a full-length one is truncated
        frames.append(pl.DataFrame(
            {"episode_id": [f"{operator}-{i:03d}"] * n_steps, "step": np.arange(n_steps, dtype=np.int32),
             "timestamp": np.arange(n_steps) / RATE_HZ, STATE: state.astype(np.float32).tolist(),
             POSE: pose.astype(np.float32).tolist(), "is_terminal": fell & (np.arange(n_steps) == n_steps - 1),
             "language_instruction": [skill] * n_steps},
            schema_overrides={STATE: pl.List(pl.Float32), POSE: pl.List(pl.Float32)},
        ))  # fmt: skip
    return pl.concat(frames)


def raw_forward_rate(backend: LocalLLMBackend, texts: list[str], batch_size: int) -> float:
    """Prompts/s of the bare model on the same full prompts: left-padded batches of token ids built
    beforehand, one forward pass each, nothing else (no prefix reuse, no tokenising, no bookkeeping)."""
    import torch

    seqs = backend.encode(texts)
    batches = []
    for i in range(0, len(seqs), batch_size):
        chunk = sorted(seqs, key=len)[i : i + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), backend._pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, s in enumerate(chunk):
            ids[row, width - len(s) :], mask[row, width - len(s) :] = torch.tensor(s), 1
        batches.append((ids, mask))
    start, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for ids, mask in batches:
            backend._model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return len(texts) / (time.perf_counter() - start), len(texts) / (time.process_time() - cpu)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def timed_cpu(fn):
    """`fn()`, its wall seconds and this process's CPU seconds (all threads; on a CPU shared with
    other jobs, wall time measures the load, CPU time the work)."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embodiment", default="ant", help="simulated fleet and robot profile (default ant)")
    parser.add_argument("--sim", type=int, default=6, help="simulated episodes (default 6)")
    parser.add_argument("--steps", type=int, default=200, help="control steps per simulated episode")
    parser.add_argument("--episodes", type=Path, help="a Parquet canonical table to label instead")
    parser.add_argument("--kinematic", action="store_true", help="use the kinematic stand-in, not the simulator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=16, help="prompts in the throughput comparison")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model-dir", type=Path, help="transformers folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--segment-steps", type=int, default=40, help="control steps per segment (the pipeline's 40)")
    parser.add_argument("--fine-tune", action="store_true",
                        help="also fine-tune the referee (LoRA) on half the episodes and compare on the other half")
    parser.add_argument("--int8", action="store_true",
                        help="also judge the prompts with quantize='int8' and compare its probabilities with float32's")
    parser.add_argument("--throughput-only", action="store_true",
                        help="batched and raw forward rates only (no unbatched run, no cache run, no agreement)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    if args.kinematic and args.embodiment != "ant":
        parser.error("--kinematic stands in for the ant only")
    profile = embodiment_profile(args.embodiment)
    if args.episodes:
        df, source = pl.read_parquet(args.episodes), str(args.episodes)
    elif args.kinematic:
        df, source = kinematic_episodes(args.sim, args.seed, args.steps), "kinematic stand-in"
    else:
        df = simulated_episodes(args.embodiment, args.sim, args.seed, args.steps)
        source = f"simulated fleet ({args.embodiment})"
    print(f"episodes: {df['episode_id'].n_unique()} from {source}, {df.height} steps; robot profile {profile.name}")

    backend = LocalLLMBackend(args.model_dir, batch_size=args.batch_size, num_threads=args.threads)
    _, seg = segment_table(df, profile, args.segment_steps)
    texts = seg["text"].drop_nulls().to_list()[: args.prompts]
    _, load_s = timed(lambda: backend.judge(texts[:1]))  # loads the model, computes the shared prefix
    print(f"model {backend.model_id}: loaded and first prompt in {load_s:.1f} s")

    rates, cpu_rates, probs = {}, {}, {}
    runs = [("batched", args.batch_size, True)]
    if not args.throughput_only:
        runs = [("unbatched", 1, True), *runs, ("batched, no shared prefix", args.batch_size, False)]
    for name, batch_size, share in runs:
        backend.batch_size, backend.share_prefix = batch_size, share
        tokens_before = backend.computed_tokens
        probs[name], seconds, cpu = timed_cpu(lambda: backend.judge(texts))
        rates[name], cpu_rates[name] = len(texts) / seconds, len(texts) / cpu
        computed = backend.computed_tokens - tokens_before  # deterministic, unlike time on a shared CPU
        print(f"  {name:28s} {len(texts)} prompts in {seconds:6.1f} s = {rates[name]:6.2f} prompts/s "
              f"({cpu_rates[name]:5.2f} per CPU second), {computed} tokens through the model")
    backend.batch_size, backend.share_prefix = args.batch_size, True
    rates["raw forward"], cpu_rates["raw forward"] = raw_forward_rate(backend, texts, args.batch_size)
    tokens = [len(s) for s in backend.encode(texts)]
    print(f"  {'raw batched forward pass':28s} {len(texts)} prompts = {rates['raw forward']:6.2f} prompts/s "
          f"({cpu_rates['raw forward']:5.2f} per CPU second; the bare model on the same full prompts, "
          f"{np.mean(tokens):.0f} tokens each)")
    if not args.throughput_only:
        print(f"throughput: batched / unbatched = {rates['batched'] / rates['unbatched']:.2f}x; "
              f"shared prefix gains {rates['batched'] / rates['batched, no shared prefix']:.2f}x")  # fmt: skip
    print(f"referee / raw forward pass = {rates['batched'] / rates['raw forward']:.0%} "
          f"(per CPU second {cpu_rates['batched'] / cpu_rates['raw forward']:.0%}); "
          f"referee / the old 1.1 prompts/s = {rates['batched'] / 1.1:.2f}x")  # fmt: skip
    if args.int8:
        q8 = LocalLLMBackend(args.model_dir, batch_size=args.batch_size, num_threads=args.threads, quantize="int8")
        q8.judge(texts[:1])
        got, seconds, cpu = timed_cpu(lambda: q8.judge(texts))
        rates["batched int8"], cpu_rates["batched int8"] = len(texts) / seconds, len(texts) / cpu
        fp = np.array([[p[k] for k in sorted(p)] for p in probs["batched"]])
        q = np.array([[p[k] for k in sorted(p)] for p in got])
        deviation = {"max_abs": float(np.abs(q - fp).max()), "mean_abs": float(np.abs(q - fp).mean()),
                     "same_label": float((q.argmax(1) == fp.argmax(1)).mean())}  # fmt: skip
        print(f"  {'batched, int8':28s} {len(texts)} prompts in {seconds:6.1f} s = {rates['batched int8']:6.2f} "
              f"prompts/s ({cpu_rates['batched int8']:5.2f} per CPU second) = "
              f"{rates['batched int8'] / rates['batched']:.2f}x float32; label probabilities vs float32: max |diff| {deviation['max_abs']:.3f}, mean "
              f"{deviation['mean_abs']:.4f}, same most likely label {deviation['same_label']:.0%}")  # fmt: skip
    if args.throughput_only:
        if args.json:
            args.json.write_text(json.dumps({"source": source, "model_id": backend.model_id, "prompts_per_s": rates,
                                             "prompts_per_cpu_s": cpu_rates}, indent=2))  # fmt: skip
        return

    k = args.segment_steps
    with tempfile.TemporaryDirectory() as tmp:
        cache = JudgementCache(Path(tmp) / "judgements.sqlite")
        (labels_cold, cold_s) = timed(lambda: label_episodes(df, backend, profile, segment_steps=k,
                                                            batch_size=args.batch_size, cache=cache))
        (labels_warm, warm_s) = timed(lambda: label_episodes(df, backend, profile, segment_steps=k,
                                                             batch_size=args.batch_size, cache=cache,
                                                             progress_bar=False))  # fmt: skip
    cold, warm = labels_cold.stats, labels_warm.stats
    print(f"cache: cold run {cold_s:.1f} s ({cold['calls']} prompts = {cold['calls'] / cold_s:.2f} prompts/s, "
          f"{cold['prompt_tokens']} tokens), rerun {warm_s:.3f} s ({warm['calls']} prompts, {warm['cache_hits']} hits)")

    def report(name: str, segments: pl.DataFrame, episodes: pl.DataFrame) -> dict:
        a = referee_agreement(segments, episodes, profile, segment_steps=k)
        print(f"{name}: {a['segments']} segments of {a['episodes']} episodes; labels "
              f"{dict(segments['label'].drop_nulls().value_counts().sort('label').iter_rows())}, true "
              f"{a.get('true_label_counts')}")
        print(f"  value-order correlation {a['voc']}  (constant per segment {a['voc_time_baseline']})")
        print(f"  per-segment Spearman    {a['spearman_segment']}  (no signal: 0)")
        print(f"  label accuracy          {a['accuracy']}  (majority label {a['majority_accuracy']}); "
              f"balanced {a['balanced_accuracy']} (chance 0.25)")  # fmt: skip
        return a

    results: dict = {"source": source, "model_id": backend.model_id, "prompts_per_s": rates,
                     "prompts_per_cpu_s": cpu_rates, "cold_s": cold_s,
                     "rerun_s": warm_s, "cold": cold, "rerun": warm}  # fmt: skip
    if not args.fine_tune:
        results["agreement"] = report("base model, all episodes", labels_cold.segments, df)
    else:
        from foundations.versions import VersionStore
        from quality.referee_tuning import TuningConfig, tune_referee

        config = TuningConfig()
        with tempfile.TemporaryDirectory() as tmp:
            base = LocalLLMBackend(args.model_dir, batch_size=args.batch_size, num_threads=args.threads)
            (record, _), tune_s = timed(lambda: tune_referee(df, profile, base, name="referee-bench", segment_steps=k,
                                                             config=config, store=VersionStore("x", root=Path(tmp))))
            tuned = LocalLLMBackend(args.model_dir, batch_size=args.batch_size, num_threads=args.threads,
                                    adapter_dir=Path(record["path"]))  # fmt: skip
            held = df.filter(pl.col("episode_id").is_in(record["held_out_episodes"]))
            tuned_labels, tuned_s = timed(lambda: label_episodes(held, tuned, profile, segment_steps=k, cache=False,
                                                                 batch_size=args.batch_size, progress_bar=False))
        print(f"fine-tune: {record['training']['segments']} segments from {record['teacher']}, {tune_s:.1f} s "
              f"(epoch loss {record['training']['epoch_loss'][0]} -> {record['training']['epoch_loss'][-1]}, "
              f"train accuracy {record['training']['train_accuracy']}); tuned referee "
              f"{tuned_labels.segments.height / tuned_s:.2f} prompts/s")  # fmt: skip
        held_base = labels_cold.segments.filter(pl.col("episode_id").is_in(record["held_out_episodes"]))
        results["agreement_base"] = report("base model, held-out episodes", held_base, held)
        results["agreement"] = report("fine-tuned, held-out episodes", tuned_labels.segments, held)
        results["fine_tune"] = {"seconds": tune_s, **record["training"]}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
