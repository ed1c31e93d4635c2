"""Ingestion throughput against the bare decoders and forge-robotics, on the same MCAP files in one run.

Simulates a fleet (N files of the Ant fleet, no planted faults), then measures, in rounds that
take turns so machine load hits every contender alike (best round of --repeats reported):
  * ingest: `ingest_files` with the fleet's mapping, the whole stage: MCAP read, CDR decode,
    alignment to the control clock, canonical rows;
  * mcap-ros2: the bare mcap-ros2-support decode of the same topics
    (`make_reader(...).iter_decoded_messages()` with its DecoderFactory), a Python object per message;
  * rosbags: rosbags' CDR deserializer on the same message bytes (when rosbags is installed);
  * raw MCAP: record iteration with mcap's reader, no decoding at all;
  * forge: forge-robotics' `convert` (MCAP to LeRobot v3, in this process, one call per file
    as it takes one file); `--forge-cli N` also times its `forge convert` command on N files.
    forge is installed by the `bench` extra: `pip install -e '.[bench]'`; without it the line
    says so.
Every rate is messages of the mapped topics per second. `--workers` (default: the mapping's
automatic choice) is passed to `ingest_files`; a pool of worker processes is started before the
rounds (a pool lives as long as the process that uses it).

`--big-gb 1` also writes one long log of about that size (the fleet's episodes one after another)
and reports the peak memory (RSS) of ingesting it in a fresh process.

    python benchmarks/ingest_benchmark.py --files 40
    python benchmarks/ingest_benchmark.py --files 40 --workers 2 --big-gb 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory

from foundations.ingest import ingest_files, load_mapping
from foundations.ingest.ingest import default_workers

MAPPING = "ant_fleet_ros2"


def simulate(out: Path, files: int, seed: int) -> list[Path]:
    from simulator.fleet import simulate_fleet

    simulate_fleet(files, out, seed=seed, fault_rate=0.0, workers=1)
    return sorted(out.rglob("*.mcap"))


def mcap_ros2_decode(paths: list[Path], topics: list[str]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            for _ in make_reader(fh, decoder_factories=[DecoderFactory()]).iter_decoded_messages(topics=topics, log_time_order=False):
                n += 1
    return n


def raw_iteration(paths: list[Path], topics: list[str]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            for _ in make_reader(fh).iter_messages(topics=topics, log_time_order=False):
                n += 1
    return n


def rosbags_decoder() -> Callable[[list[Path], list[str]], int] | str:
    """rosbags' deserializer over the same message bytes, or why it cannot run."""
    try:
        from rosbags.typesys import Stores, get_typestore, get_types_from_msg
    except ImportError:
        return "rosbags is not installed"
    import re

    store = get_typestore(Stores.EMPTY)  # one for the run: rosbags generates a deserializer per type once
    registered: set[tuple[str, bytes]] = set()

    def run(paths: list[Path], topics: list[str]) -> int:
        n = 0
        for p in paths:
            with open(p, "rb") as fh:
                reader = make_reader(fh)
                for schema in reader.get_summary().schemas.values():
                    if (schema.name, schema.data) in registered:
                        continue
                    registered.add((schema.name, schema.data))
                    # A ROS 2 MCAP schema: the type, then "MSG: pkg/Name" blocks of its dependencies.
                    parts = re.split(r"^={3,}$", schema.data.decode(), flags=re.MULTILINE)
                    types = get_types_from_msg(parts[0], schema.name)
                    for part in parts[1:]:
                        head, _, body = part.strip().partition("\n")
                        name = head.removeprefix("MSG:").strip()
                        if "/msg/" not in name:
                            name = name.replace("/", "/msg/", 1)
                        types.update(get_types_from_msg(body, name))
                    store.register(types)
                for schema, _, message in reader.iter_messages(topics=topics, log_time_order=False):
                    store.deserialize_cdr(message.data, schema.name)
                    n += 1
        return n

    return run


def forge_convert(out: Path) -> Callable[[list[Path], list[str]], int] | str:
    try:
        from forge.convert import convert
    except ImportError:
        return "forge-robotics is not installed (pip install -e '.[bench]')"

    def run(paths: list[Path], topics: list[str]) -> int:
        shutil.rmtree(out, ignore_errors=True)
        for i, p in enumerate(paths):
            result = convert(p, out / str(i), target_format="lerobot-v3")
            if not result.success:
                raise RuntimeError(f"forge could not convert {p}: {result.errors}")
        return -1  # forge counts frames, not messages: the caller's message count is used

    return run


def forge_cli(paths: list[Path], out: Path) -> float | str:
    """Seconds of `forge convert` commands, one per file, as a user runs them."""
    exe = shutil.which("forge") or str(Path(sys.executable).parent / "forge")
    if not Path(exe).exists():
        return "the forge command is not installed (pip install -e '.[bench]')"
    start = time.perf_counter()
    for i, p in enumerate(paths):
        subprocess.run([exe, "convert", str(p), str(out / f"cli{i}"), "--format", "lerobot-v3"], check=True,
                       capture_output=True)
    return time.perf_counter() - start


def write_big_log(sources: list[Path], path: Path, gigabytes: float) -> int:
    """One long log: the fleet's episodes one after another (times shifted) until the file has the size asked."""
    from mcap.writer import CompressionType, Writer

    logs = []
    schemas: dict[str, tuple[str, str, bytes]] = {}
    for p in sources:
        with open(p, "rb") as fh:
            log = []
            for schema, channel, message in make_reader(fh).iter_messages(log_time_order=True):
                schemas[channel.topic] = (schema.name, schema.encoding, schema.data)
                log.append((channel.topic, message.log_time, message.data))
            logs.append(log)
    with open(sources[0], "rb") as fh:
        metadata = {m.name: dict(m.metadata) for m in make_reader(fh).iter_metadata()}
    n = messages = 0
    with open(path, "wb") as fh:
        writer = Writer(fh, compression=CompressionType.ZSTD)
        writer.start("ros2", "robocurate-benchmark")
        channel_ids = {}
        for topic, (name, encoding, data) in schemas.items():
            schema_id = writer.register_schema(name, encoding, data)
            channel_ids[topic] = writer.register_channel(topic, "cdr", schema_id)
        cursor = logs[0][0][1]
        while fh.tell() < gigabytes * 1e9:
            log = logs[n % len(logs)]
            shift = cursor - log[0][1]
            for topic, t, data in log:
                writer.add_message(channel_ids[topic], t + shift, data, t + shift)
            cursor += log[-1][1] - log[0][1] + 10**9
            n += 1
            messages += len(log)
        for name, values in metadata.items():
            writer.add_metadata(name, values)
        writer.finish()
    return messages


_PEAK = """
import json, resource, sys, time
from pathlib import Path
from foundations.ingest import ingest_file, load_mapping
mapping = load_mapping(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
result = ingest_file(Path(sys.argv[1]), mapping, sha256="0" * 64)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "messages": result.messages, "rows": result.episodes.height,
                  "quarantined": result.quarantine.height, "rss_before_mb": before / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_memory(path: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), MAPPING], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40, help="simulated fleet files")
    parser.add_argument("--workers", type=int, default=None, help="ingest_files workers (default: its automatic choice)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each contender is reported")
    parser.add_argument("--forge-cli", type=int, default=0, help="also time the `forge convert` command on this many files")
    parser.add_argument("--big-gb", type=float, default=0.0, help="also measure peak RSS ingesting one log of this size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mapping = load_mapping(MAPPING)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        paths = simulate(root / "fleet", args.files, args.seed)
        sim_s = time.perf_counter() - t
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        with open(paths[0], "rb") as fh:
            topics = [t for t in mapping.topics if t in {c.topic for c in make_reader(fh).get_summary().channels.values()}]
        workers = args.workers if args.workers is not None else default_workers(paths)

        def ingest(ps: list[Path], _: list[str]) -> int:
            result = ingest_files(ps, mapping, progress=False, workers=workers)
            assert result.quarantine.height == 0, result.quarantine.to_dicts()
            return result.messages

        contenders: dict[str, Callable[[list[Path], list[str]], int] | str] = {
            "ingest_files (whole stage)": ingest,
            "mcap-ros2 decode": mcap_ros2_decode,
            "rosbags deserialize": rosbags_decoder(),
            "raw MCAP iteration": raw_iteration,
            "forge-robotics convert": forge_convert(root / "forge"),
        }
        runnable = {k: v for k, v in contenders.items() if callable(v)}
        for run in runnable.values():  # warm-up: imports, a started worker pool, forge's first-call set-up
            run(paths[:2], topics)
        best: dict[str, float] = {}
        counts: dict[str, int] = {}
        for _ in range(args.repeats):
            for name, run in runnable.items():
                t = time.perf_counter()
                counts[name] = run(paths, topics)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
        messages = counts["ingest_files (whole stage)"]
        for name, n in counts.items():
            assert n in (-1, messages), (name, n, messages)
        cli = forge_cli(paths[:args.forge_cli], root / "forge") if args.forge_cli else None

        print(f"{len(paths)} simulated fleet files ({size_mb:.1f} MB MCAP, simulated in {sim_s:.0f} s), "
              f"{messages} messages of {len(topics)} mapped topics; ingest workers: {workers}; best of {args.repeats} rounds; "
              f"machine: {os.cpu_count()} CPUs")
        rate = {name: messages / s for name, s in best.items()}
        for name in contenders:
            if name in rate:
                print(f"  {name:30s} {best[name]:7.2f} s  {rate[name]:10.0f} messages/s")
            else:
                print(f"  {name:30s} not measured: {contenders[name]}")
        if isinstance(cli, float):
            cli_rate = messages * args.forge_cli / len(paths) / cli  # the files are alike: their share of the messages
            rate["forge convert (command)"] = cli_rate
            print(f"  {'forge convert (command)':30s} {cli:7.2f} s  {cli_rate:10.0f} messages/s  ({args.forge_cli} files, one command each)")
        elif cli is not None:
            print(f"  forge convert (command)        not measured: {cli}")
        ours = rate["ingest_files (whole stage)"]
        print(f"ratio ingest / mcap-ros2 decode: {ours / rate['mcap-ros2 decode']:.2f}x  (goal >= 1.5x)")
        for name in ("forge-robotics convert", "forge convert (command)"):
            if name in rate:
                print(f"ratio ingest / {name}: {ours / rate[name]:.1f}x  (goal >= 20x)")
        if "rosbags deserialize" in rate:
            print(f"ratio ingest / rosbags deserialize: {ours / rate['rosbags deserialize']:.2f}x")
        print(f"ratio ingest / raw MCAP iteration: {ours / rate['raw MCAP iteration']:.2f}x")

        if args.big_gb:
            big = root / "big.mcap"
            t = time.perf_counter()
            n = write_big_log(paths, big, args.big_gb)
            gen_s = time.perf_counter() - t
            peak = peak_memory(big)
            print(f"one log of {big.stat().st_size / 1e9:.2f} GB ({n} messages, written in {gen_s:.0f} s): ingested in "
                  f"{peak['seconds']:.1f} s ({peak['messages'] / peak['seconds']:.0f} messages/s, {peak['rows']} canonical rows, "
                  f"{peak['quarantined']} quarantined); peak RSS {peak['peak_rss_mb']:.0f} MB "
                  f"({peak['rss_before_mb']:.0f} MB after imports)")


if __name__ == "__main__":
    main()
