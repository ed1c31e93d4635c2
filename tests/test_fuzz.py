"""Fuzz the MCAP reader with mutated logs: no call raises, every file ends in rows or a reason.

150 seeded mutations of two small valid logs (one chunk, and many small chunks): truncations at
random offsets, flipped bytes, runs of zeroed bytes, wrong schema texts and swapped topics. Rows
kept from a truncated or damaged copy must be exactly the intact file's first steps: damage
is never read as data.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import polars as pl
import pytest

from mcap_factory import MSGDEFS, Episode, rewrite_log, write_fleet_log
from foundations.ingest import ingest_file, load_mapping
from foundations.schema import QUARANTINE_SCHEMA

MUTATIONS = 150
COMPARED = ["step", "timestamp", "observation.state", "action", "language_instruction"]
JOINT_STATE = "sensor_msgs/msg/JointState"
WRONG_SCHEMAS = [  # texts a recorder could embed by mistake, from near misses to garbage
    MSGDEFS[JOINT_STATE].replace("float64[] position", "float32[] position"),
    MSGDEFS[JOINT_STATE].replace("string[] name\n", ""),
    MSGDEFS["std_msgs/msg/String"],
    MSGDEFS["nav_msgs/msg/Odometry"],
    "int32 x\n",
    "this is not a message definition {",
    "",
]
SWAPS = [{"/joint_states": "/odom", "/odom": "/joint_states"}, {"/cmd_joint": "/events", "/events": "/cmd_joint"},
         {"/instruction": "/events", "/events": "/instruction"}, {"/joint_states": "/js"}]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    mapping = load_mapping("ant_fleet_ros2")
    logs = [write_fleet_log(folder / "one_chunk.mcap", [Episode(1.0), Episode(1.0)]),
            write_fleet_log(folder / "chunks.mcap", [Episode(1.0), Episode(1.0)], chunk_size=4 * 1024)]
    return folder, mapping, [(log.path, log.path.read_bytes(), ingest_file(log.path, mapping).episodes) for log in logs]


def _mutate(rng: random.Random, src: Path, data: bytes, out: Path) -> str:
    kind = rng.choice(["truncate", "truncate", "flip", "flip", "zeros", "schema", "topic"])
    if kind == "truncate":
        out.write_bytes(data[: rng.randrange(0, len(data))])
    elif kind in ("flip", "zeros"):
        damaged = bytearray(data)
        at = rng.randrange(0, len(data))
        if kind == "flip":
            damaged[at] ^= 1 << rng.randrange(8)  # one damage per file (see mcap_source._decompress_prefix)
        else:
            end = min(at + rng.randrange(1, 64), len(data))
            damaged[at:end] = bytes(end - at)
        out.write_bytes(bytes(damaged))
    elif kind == "schema":
        rewrite_log(src, out, schema_text={rng.choice([JOINT_STATE, "std_msgs/msg/Float64MultiArray"]): rng.choice(WRONG_SCHEMAS)})
    else:
        rewrite_log(src, out, topics=rng.choice(SWAPS))
    return kind


def test_mutated_logs_never_crash_and_always_end_in_rows_or_a_reason(bases):
    folder, mapping, logs = bases
    rng = random.Random(20261130)
    started = time.monotonic()
    outcomes: dict[tuple[str, str], int] = {}
    for i in range(MUTATIONS):
        src, data, intact = logs[i % len(logs)]
        out = folder / f"mutant_{i:03d}.mcap"
        kind = _mutate(rng, src, data, out)
        result = ingest_file(out, mapping)  # never raises
        assert result.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
        assert result.episodes.height or result.quarantine.height, (i, kind)
        assert result.quarantine["reason"].str.len_chars().min() or not result.quarantine.height
        assert result.quarantine.filter(pl.col("reason").is_null() | (pl.col("check").is_null())).height == 0
        if kind in ("truncate", "flip", "zeros"):  # damage keeps the intact file's steps, never other values
            for index, ep in enumerate(result.episodes.partition_by("episode_id", maintain_order=True)):
                whole = intact.filter(pl.col("episode_id").str.ends_with(ep["episode_id"][0][-4:]))
                assert ep.select(COMPARED).equals(whole.head(ep.height).select(COMPARED)), (i, index)
        outcome = "rows" if result.episodes.height else "quarantined"
        outcomes[(kind, outcome)] = outcomes.get((kind, outcome), 0) + 1
    elapsed = time.monotonic() - started
    print(f"{MUTATIONS} mutations in {elapsed:.1f} s: {dict(sorted(outcomes.items()))}")
    assert elapsed < 60
    assert outcomes.get(("truncate", "rows"), 0) > 0  # recovery really keeps data
