"""Training cost of the LoRA-MoE encoder, all in one process.

Measures, on the same canonical-schema data and the same mini-batches:
  * seconds per d3rlpy update of IQL and BC with the LoRA-MoE encoder (MiniLM,
    trailing 1 and 2 layers), a single LoRA of the same parameter count, and d3rlpy's
    plain VectorEncoder MLP (256, 256), as ratios to the MLP and to the single LoRA
    with the transformer where it sits (`critic_encoder`: "same", on every network;
    "mlp", in the policy only, the critics on d3rlpy's MLP; BC has no critic);
  * dense-mix against routed-only expert compute, for one state-action encoder
    (forward + backward), at several batch sizes and expert counts;
  * optionally (--threads-compare) the same IQL update with 2 torch threads;
  * optionally (--demo) a whole CPU-preset run, IQL then BC, through `train`.

The data are synthetic Ant-shaped episodes (27 state values, 8 actions, three
instructions): update cost does not depend on what the numbers mean.

    python benchmarks/train_benchmark.py --batch 64 --updates 10 --threads 1 [--rounds 3] [--demo]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import polars as pl
import torch

from foundations.schema import ACTION, POLARS_SCHEMA, STATE
from training.lora_moe import LoRAMoEEncoderFactory, mark_targets
from training.offline_rl import (
    TrainConfig,
    build_mdp_dataset,
    make_algo,
    make_critic_encoder_factory,
    make_encoder_factory,
    quiet_d3rlpy,
    train,
)
from training.policy_average import PolicyAverage, average_policy

INSTRUCTIONS = ["turn left", "turn right", "walk forward"]
BOUNDS = (-1.0, 1.0)  # actions are tanh-squashed below


def synthetic_table(n_episodes: int, steps: int, seed: int = 0) -> pl.DataFrame:
    """Canonical rows: random-walk states, bounded actions, one fall in four episodes."""
    rng = np.random.default_rng(seed)
    n = n_episodes * steps
    episode = np.repeat(np.arange(n_episodes), steps)
    step = np.tile(np.arange(steps), n_episodes)
    states = np.cumsum(rng.normal(scale=0.1, size=(n, 27)), axis=0).astype(np.float32)
    actions = np.tanh(rng.normal(size=(n, 8))).astype(np.float32)
    is_last = step == steps - 1
    return pl.DataFrame(
        {
            "episode_id": np.char.add("ep-", episode.astype(str)),
            "step": step.astype(np.int32),
            "timestamp": step * 0.05,
            STATE: pl.Series(STATE, states).cast(pl.List(pl.Float32)),
            ACTION: pl.Series(ACTION, actions).cast(pl.List(pl.Float32)),
            "reward": rng.normal(1.0, 0.5, n).astype(np.float32),
            "is_first": step == 0,
            "is_last": is_last,
            "is_terminal": is_last & (episode % 4 == 0),
            "language_instruction": np.array(INSTRUCTIONS)[episode % 3],
            "robot_id": "robot-0",
            "source": "synthetic",
            "source_file": "synthetic",
            "source_sha256": "0" * 64,
        }
    ).cast(POLARS_SCHEMA)  # type: ignore[arg-type]


def build_algo(config: TrainConfig, table: pl.DataFrame) -> tuple[Any, PolicyAverage | None]:
    """A built d3rlpy algorithm of `config`, target networks marked, and its policy average, as `train`
    builds them."""
    encoder = make_encoder_factory(config, INSTRUCTIONS, table)
    critic = make_critic_encoder_factory(config, INSTRUCTIONS, table, encoder)
    algo = make_algo(config, encoder, 1.0, action_size=8, critic_encoder=critic)
    algo.create_impl(algo_observation_shape(table), 8)
    mark_targets(algo)
    return algo, average_policy(algo, config.policy_ema)


def time_updates(algo: Any, batches: list, average: PolicyAverage | None = None) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds of `algo.update` over the batches, each followed by folding the
    policy into `average` as `train` does.

    On a CPU shared with other work, wall time swings with their load; with one
    torch thread the process CPU time is the steadier measure of the cost.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        algo.update(batch)
        if average is not None:
            average.update()
    return (time.perf_counter() - wall) / len(batches), (time.process_time() - cpu) / len(batches)


def seconds_per_update(config: TrainConfig, table: pl.DataFrame, batches: list, warmup: int) -> tuple[float, float]:
    """Mean (wall, process CPU) seconds of `algo.update` over the batches, after `warmup` updates."""
    algo, average = build_algo(config, table)
    time_updates(algo, batches[:warmup], average)
    return time_updates(algo, batches[warmup:], average)


def algo_observation_shape(table: pl.DataFrame) -> tuple[int]:
    return (len(table[STATE][0]) + 1,)


def encoder_seconds(factory: LoRAMoEEncoderFactory, batch: int, repeats: int) -> float:
    """Forward + backward process CPU seconds of one state-action encoder."""
    enc = factory.create_with_action((28,), 8)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([rng.normal(size=(batch, 27)), rng.integers(0, 3, (batch, 1))], 1).astype(np.float32))
    a = torch.rand(batch, 8) * 2 - 1
    for _ in range(2):
        enc(x, a).sum().backward()
    start = time.process_time()
    for _ in range(repeats):
        enc(x, a).sum().backward()
    return (time.process_time() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--updates", type=int, default=8, help="timed updates per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; medians are printed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP stalls on shared CPUs)")
    parser.add_argument("--threads-compare", action="store_true", help="also time IQL LoRA-MoE with 2 threads")
    parser.add_argument("--demo", action="store_true", help="also run a whole CPU-preset IQL + BC training")
    parser.add_argument("--demo-episodes", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    table = synthetic_table(n_episodes=24, steps=100)
    dataset = build_mdp_dataset(table, "reward", INSTRUCTIONS, BOUNDS)
    np.random.seed(0)
    batches = [dataset.sample_transition_batch(args.batch) for _ in range(args.warmup + args.updates)]
    base = TrainConfig(batch_size=args.batch, instructions=INSTRUCTIONS, action_bounds=BOUNDS)
    cpu = base.encoder  # the CPU preset: 1 trailing layer, 1 state token, frozen matmuls in bf16 where fast
    lora, lora_all = f"single LoRA r{cpu.rank * cpu.n_experts}", f"single LoRA r{cpu.rank * cpu.n_experts}, every net"
    # name -> (config change, the single-LoRA row it is compared with: the transformer in the same places).
    # The CPU preset keeps the transformer in the policy (critic_encoder "mlp"); "every net" puts it on the
    # critics too (critic_encoder "same"); BC has no critic, so those rows are IQL only.
    variants = {
        "MLP (256, 256)": ({"encoder_type": "mlp"}, None),
        lora: ({"encoder_type": "lora"}, lora),
        "LoRA-MoE (CPU preset)": ({}, lora),
        "LoRA-MoE, fp32 frozen matmuls": ({"encoder": dataclasses.replace(cpu, compute_dtype="float32")}, lora),
        "LoRA-MoE, 2 layers, 2 tok": ({"encoder": dataclasses.replace(cpu, n_layers=2, n_state_tokens=2)}, lora),
        lora_all: ({"encoder_type": "lora", "critic_encoder": "same"}, lora_all),
        "LoRA-MoE, every net": ({"critic_encoder": "same"}, lora_all),
    }

    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.updates} timed updates each, "
          f"median of {args.rounds} interleaved rounds")
    print("(tok = sample tokens; each sample also attends to its instruction's prefix token; "
          "x LoRA: against the single LoRA with the same critics)\n")
    print(f"{'algorithm':10} {'encoder':32} {'wall s/upd':>10} {'CPU s/upd':>10} {'CPU x MLP':>10} {'CPU x LoRA':>10}")
    results: dict[tuple, float] = {}
    for algorithm in ("iql", "bc"):
        # BC has no critic: with critics MLP it is the same network as without.
        names = [n for n, (change, _) in variants.items() if algorithm != "bc" or "critic_encoder" not in change]
        algos = {n: build_algo(dataclasses.replace(base, algorithm=algorithm, **variants[n][0]), table) for n in names}
        for algo, average in algos.values():
            time_updates(algo, batches[:args.warmup], average)
        # Rounds interleave the configurations, so that a load change on a shared CPU hits them alike;
        # each figure is the median over rounds.
        timings: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        for _ in range(args.rounds):
            for name, (algo, average) in algos.items():
                timings[name].append(time_updates(algo, batches[args.warmup:], average))
        for name in names:
            reference = variants[name][1]
            wall = float(np.median([w for w, _ in timings[name]]))
            cpu_s = float(np.median([c for _, c in timings[name]]))
            results[(algorithm, name)] = wall
            results[(algorithm, name, "cpu")] = cpu_s
            x_mlp = cpu_s / results[(algorithm, "MLP (256, 256)", "cpu")]
            ref = results.get((algorithm, reference, "cpu"))
            x_lora = cpu_s / ref if ref else float("nan")
            print(f"{algorithm:10} {name:32} {wall:10.3f} {cpu_s:10.3f} {x_mlp:10.1f} {x_lora:10.2f}")

    if args.threads_compare:
        torch.set_num_threads(2)
        name = "LoRA-MoE (CPU preset)"
        wall, _ = seconds_per_update(dataclasses.replace(base, algorithm="iql"), table, batches, args.warmup)
        print(f"{'iql':10} {name + ', 2 thr':34} {wall:10.3f}"
              f"  wall = {wall / results[('iql', name)]:.2f}x the {args.threads}-thread wall time")
        torch.set_num_threads(args.threads)

    print("\nexpert compute, one state-action encoder (1 MiniLM layer, 1 tok), forward + backward CPU seconds")
    print(f"{'batch':>6} {'experts':>8} {'top-k':>6} {'dense':>8} {'routed':>8} {'routed/dense':>13}")
    for batch, n_experts, top_k in [(64, 4, 2), (256, 4, 2), (64, 8, 2), (256, 8, 1)]:
        f = dataclasses.replace(cpu, instructions=INSTRUCTIONS, n_experts=n_experts, top_k=top_k)
        dense = encoder_seconds(dataclasses.replace(f, expert_compute="dense"), batch, args.updates)
        routed = encoder_seconds(dataclasses.replace(f, expert_compute="routed"), batch, args.updates)
        print(f"{batch:6d} {n_experts:8d} {top_k:6d} {dense:8.4f} {routed:8.4f} {routed / dense:13.2f}")

    if args.demo:
        demo_table = synthetic_table(n_episodes=args.demo_episodes, steps=200, seed=1)
        print(f"\nCPU preset demo on {demo_table.height} steps ({args.demo_episodes} episodes of 200):")
        total = 0.0
        for algorithm in ("iql", "bc"):
            config = TrainConfig.from_preset("cpu", algorithm=algorithm, num_threads=args.threads,
                                             action_bounds=BOUNDS)
            result = train(demo_table, config, progress=False)
            total += result.seconds
            print(f"  {algorithm}: {config.n_steps} updates of batch {config.batch_size} in {result.seconds:.1f} s "
                  f"({result.seconds_per_update:.3f} s/update, evaluators and setup included in the total)")
        print(f"  IQL + BC: {total:.1f} s")


if __name__ == "__main__":
    with quiet_d3rlpy():
        main()
