"""Faults survived, data kept: logs cut short or damaged while recording, and processes killed mid-write.

Recovery is checked against the intact file: what a damaged copy gives must be exactly the
intact file's rows up to where the damage begins, never other values.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
import zstandard
from mcap.reader import make_reader
from mcap.stream_reader import StreamReader
from mcap.records import Chunk

from mcap_factory import Episode, write_fleet_log
from foundations.ingest import ingest_file, load_mapping
from foundations.ingest.mcap_source import read_mcap

REPO = Path(__file__).resolve().parents[1]
KEY = ["episode_id", "step"]
COMPARED = ["step", "timestamp", "observation.state", "action", "language_instruction"]


@pytest.fixture(scope="module")
def mapping():
    return load_mapping("ant_fleet_ros2")


def _chunks(path: Path) -> list:
    with open(path, "rb") as fh:
        return sorted(make_reader(fh).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)


def _same_prefix(damaged: pl.DataFrame, intact: pl.DataFrame) -> None:
    """Each damaged-file episode holds exactly the first steps of the intact file's episode at the same index."""
    for index, ep in enumerate(damaged.partition_by("episode_id", maintain_order=True)):
        whole = intact.filter(pl.col("episode_id").str.ends_with(f"-{index:03d}"))
        assert 0 < ep.height <= whole.height
        assert ep.select(COMPARED).equals(whole.head(ep.height).select(COMPARED))


# ---------------------------------------------------------------- a log cut short while recording


def test_cut_short_log_keeps_complete_chunks_and_a_truncated_episode(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(3.0), Episode(3.0)], chunk_size=16 * 1024)
    intact = ingest_file(log.path, mapping)
    assert intact.episodes.height == 120 and not intact.trims["truncated"].any()
    data = log.path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.7)])  # power lost mid-way through the second episode

    result = ingest_file(cut, mapping)
    assert result.quarantine.height == 0, result.quarantine.to_dicts()
    first, second = result.episodes.partition_by("episode_id", maintain_order=True)
    assert first.height == 60 and first["is_terminal"].to_list()[-1] is False
    assert 10 < second.height < 60  # the readable part, ending at its last complete control step
    assert second["is_last"].to_list() == [False] * (second.height - 1) + [True]
    assert not second["is_terminal"].any()  # RLDS: is_last without is_terminal
    _same_prefix(result.episodes, intact.episodes)
    trims = result.trims.sort("episode_id")
    assert trims["truncated"].to_list() == [False, True]
    assert trims["truncated_reason"][0] is None
    assert f"the file ends after {cut.stat().st_size} bytes inside a chunk (cut short while writing)" in trims["truncated_reason"][1]


def test_every_complete_chunk_before_the_cut_is_kept(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(3.0)], chunk_size=8 * 1024)
    chunks = _chunks(log.path)
    assert len(chunks) >= 4
    whole = read_mcap(log.path, mapping)
    data = log.path.read_bytes()
    for chunk in chunks[:-1]:
        end = chunk.chunk_start_offset + chunk.chunk_length
        for cut in (end, end + 40):  # right after the chunk, and a few bytes into what follows
            (tmp_path / "cut.mcap").write_bytes(data[:cut])
            got = read_mcap(tmp_path / "cut.mcap", mapping)
            assert got.truncated is not None and got.lost_chunks == []
            for topic, frame in whole.frames.items():
                before = frame.filter(pl.col("log_time") <= chunk.message_end_time)
                assert got.frames[topic].head(before.height).equals(before), (topic, cut)


def test_log_cut_before_any_whole_record_is_quarantined_with_the_reason(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(1.0)])
    (tmp_path / "cut.mcap").write_bytes(log.path.read_bytes()[:300])
    result = ingest_file(tmp_path / "cut.mcap", mapping)
    assert result.episodes.height == 0
    assert result.quarantine["check"].to_list() == ["unreadable_mcap"]
    assert "the file ends after 300 bytes without the MCAP footer (cut short while writing)" in result.quarantine["reason"][0]


# ---------------------------------------------------------------- a flipped byte in a one-chunk file


def _flip_where(log_path: Path, want_error: bool, start: float) -> tuple[int, Chunk]:
    """Offset (in the file) of a byte in the only chunk's compressed records whose flip does / does not
    make zstd fail, searching forward from `start` (a fraction of the compressed records)."""
    data = log_path.read_bytes()
    chunk = next(r for r in StreamReader(open(log_path, "rb"), emit_chunks=True).records if isinstance(r, Chunk))
    base = data.index(chunk.data)
    for pos in range(int(len(chunk.data) * start), len(chunk.data)):
        damaged = bytearray(chunk.data)
        damaged[pos] ^= 0xFF
        try:
            zstandard.ZstdDecompressor().decompress(bytes(damaged), max_output_size=chunk.uncompressed_size)
            failed = False
        except zstandard.ZstdError:
            failed = True
        if failed == want_error:
            return base + pos, chunk
    raise AssertionError("no such byte")


def test_flipped_byte_in_a_one_chunk_log_keeps_the_records_before_it(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(3.0), Episode(3.0), Episode(3.0)])
    assert len(_chunks(log.path)) == 1
    intact = ingest_file(log.path, mapping)
    offset, _ = _flip_where(log.path, want_error=True, start=0.75)
    data = bytearray(log.path.read_bytes())
    data[offset] ^= 0xFF
    (tmp_path / "flipped.mcap").write_bytes(bytes(data))

    result = ingest_file(tmp_path / "flipped.mcap", mapping)
    assert result.quarantine.height == 0, result.quarantine.to_dicts()
    # the first episode whole, then the second up to the compressed block before the damaged one
    assert 60 < result.episodes.height < 120
    _same_prefix(result.episodes, intact.episodes)
    truncated = result.trims.filter(pl.col("truncated"))
    assert truncated.height == 1 and "no record decodes after damage" in truncated["truncated_reason"][0]
    assert "ZstdError" in truncated["truncated_reason"][0]


def test_chunk_failing_only_its_crc_is_lost_whole_with_the_reason(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(1.0)])
    offset, _ = _flip_where(log.path, want_error=False, start=0.5)
    data = bytearray(log.path.read_bytes())
    data[offset] ^= 0xFF
    (tmp_path / "flipped.mcap").write_bytes(bytes(data))
    result = ingest_file(tmp_path / "flipped.mcap", mapping)
    assert result.episodes.height == 0  # the damage could be anywhere: nothing of the chunk is trusted
    assert result.quarantine["check"].to_list() == ["unreadable_mcap"]
    assert "CRC mismatch" in result.quarantine["reason"][0] and "cannot be located" in result.quarantine["reason"][0]
