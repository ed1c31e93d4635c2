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


def test_log_cut_in_its_summary_keeps_every_message_and_is_not_truncated(tmp_path, mapping):
    log = write_fleet_log(tmp_path / "whole.mcap", [Episode(1.0)], markers=False)  # the file is the episode
    intact = ingest_file(log.path, mapping)
    data = log.path.read_bytes()
    footer = len(data) - 8 - (1 + 8 + 20)  # the footer record, before the closing magic
    summary_start = int.from_bytes(data[footer + 9:footer + 17], "little")
    (tmp_path / "cut.mcap").write_bytes(data[: summary_start + 30])  # the data section whole, its index cut
    got = read_mcap(tmp_path / "cut.mcap", mapping)
    assert got.truncated is None and got.lost_chunks == []
    result = ingest_file(tmp_path / "cut.mcap", mapping)
    assert result.quarantine.height == 0 and not result.trims["truncated"].any()
    assert result.episodes.select(COMPARED).equals(intact.episodes.select(COMPARED))


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


# ---------------------------------------------------------------- kill -9 mid-write, then re-run

INGEST_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from foundations import storage
    from foundations.ingest import ingest_files, load_mapping
    landing, batches = Path(sys.argv[1]), int(sys.argv[2])
    mapping = load_mapping("ant_fleet_ros2")
    files = sorted(landing.glob("*.mcap"))
    print("started", flush=True)
    for b in range(batches):
        result = ingest_files(files[b::batches], mapping, progress=False, batch_dir=landing)
        storage.write_partition(result.episodes, "episodes", f"fleet/batch_{b}")
        print("wrote", b, flush=True)
""")

PUBLISH_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import polars as pl
    from foundations.publish import publish
    from foundations.recipes import load_recipe
    table, sources, recipe, hub = (Path(a) for a in sys.argv[1:5])
    selected, sources, recipe = pl.read_parquet(table), pl.read_parquet(sources), load_recipe(recipe)
    print("started", flush=True)
    t = time.monotonic()
    result = publish(recipe, selected, sources=sources, validation={"passed": True}, quality_stats={},
                     code_version="kill-test", root=hub)
    print("published", result.version, result.created, round(time.monotonic() - t, 3), flush=True)
""")


def _child(code: str, args: list, home: Path) -> subprocess.Popen:
    env = {**os.environ, "ROBOCURATE_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_and_kill(code: str, args: list, home: Path, delay_s: float, after: Path | None = None) -> str:
    """Start the child, SIGKILL it `delay_s` after it says it started (or let it finish first); its stdout.

    `after`: a folder; the delay counts from when something hidden (a build) appears in it instead.
    """
    child = _child(code, args, home)
    assert child.stdout.readline().strip() == "started", child.stderr.read()
    deadline = time.monotonic() + 30
    while after is not None and child.poll() is None and time.monotonic() < deadline:
        if after.is_dir() and any(p.name.startswith(".tmp-") for p in after.iterdir()):
            break
        time.sleep(0.002)
    time.sleep(delay_s)
    child.send_signal(signal.SIGKILL)
    out, _ = child.communicate(timeout=60)
    return out


def _finish(code: str, args: list, home: Path) -> str:
    child = _child(code, args, home)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    return out


def test_ingest_killed_mid_write_leaves_no_partial_partition_and_reruns_exactly(tmp_path, mapping):
    from foundations import storage
    from foundations.ingest import ingest_files

    landing = tmp_path / "landing"
    landing.mkdir()
    for i in range(8):
        write_fleet_log(landing / f"run_{i}.mcap", [Episode(1.0 + 0.25 * i)], robot_id=f"ant-{i % 3}")
    batches = 4
    files = sorted(landing.glob("*.mcap"))
    expected = {f"batch_{b}": ingest_files(files[b::batches], mapping, progress=False, batch_dir=landing).episodes
                for b in range(batches)}
    home = tmp_path / "home"
    rng = random.Random(4)
    kills = 0
    for attempt in range(4):
        out = _run_and_kill(INGEST_CHILD, [landing, batches], home, rng.uniform(0.0, 0.8))
        kills += "wrote 3" not in out
        with storage.using_root(home):
            folder = storage.lake_table("episodes") / "fleet"
            visible = sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []
            assert set(visible) <= set(expected)
            for name in visible:  # every visible partition is whole, never a torn file
                assert storage.read_partition("episodes", f"fleet/{name}").equals(expected[name]), (attempt, name)
            table = storage.read_table("episodes")  # stray temporary files are never read as data
            assert (table.height if table is not None else 0) == sum(expected[n].height for n in visible)
    assert kills >= 2, "the kills should land before the run ends"
    with storage.using_root(home):  # a kill inside a write leaves only a hidden temporary file
        strays = [p.name for p in storage.lake_table("episodes").rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in strays), strays
    _finish(INGEST_CHILD, [landing, batches], home)
    with storage.using_root(home):
        table = storage.read_table("episodes")
    whole = pl.concat(list(expected.values()))
    assert table.height == whole.height and table.select(KEY).is_unique().all()  # no row lost or doubled
    assert table.sort(KEY).equals(whole.sort(KEY))


def test_publish_killed_mid_write_never_shows_a_partial_version_and_reruns_to_one(tmp_path):
    from test_publish import make_episodes, make_scores, sources_frame, write_recipe
    from foundations.publish import list_versions, resolve_version
    from foundations.recipes import load_recipe, select_episodes
    from foundations.versions import VersionStore

    recipe_path = write_recipe(tmp_path, "killtest", publish={"shard_rows": 50})
    table = make_episodes(60, 40, seed=3)
    selected, _ = select_episodes(load_recipe(recipe_path), table, make_scores(table))
    selected.write_parquet(tmp_path / "selected.parquet")
    sources_frame().write_parquet(tmp_path / "sources.parquet")
    args = [tmp_path / "selected.parquet", tmp_path / "sources.parquet", recipe_path]

    reference = _finish(PUBLISH_CHILD, args + [tmp_path / "hub_ref"], tmp_path / "home").split()
    seconds = float(reference[-1])  # how long the publish itself takes here
    ref = resolve_version("killtest", root=tmp_path / "hub_ref")
    hub = tmp_path / "hub"
    store = VersionStore("hub", kind="dataset", root=hub)
    rng = random.Random(11)
    torn = 0
    for attempt in range(4):  # twice while a version is being built, then at random points
        building = hub / "killtest" if attempt < 2 else None
        _run_and_kill(PUBLISH_CHILD, args + [hub], tmp_path / "home", rng.uniform(0.0, seconds * (0.3 if building else 1.1)),
                      after=building)
        torn += any(p.name.startswith(".tmp-") for p in hub.joinpath("killtest").iterdir())
        versions = list_versions("killtest", root=hub)
        assert len(versions) <= 1, versions  # either nothing or the one whole version
        for record in versions:
            assert record["content_hash"] == ref["content_hash"] and record["version"] == "1.0.0"
            store.verify(record)  # every file as recorded
        if not versions:
            with pytest.raises(LookupError):
                resolve_version("killtest", root=hub)
    assert torn >= 1, "a kill should land while a version is being built"
    out = _finish(PUBLISH_CHILD, args + [hub], tmp_path / "home").split()
    assert out[1:3] == ["published", "1.0.0"]
    versions = list_versions("killtest", root=hub)
    assert [v["version"] for v in versions] == ["1.0.0"]
    record = versions[0]
    store.verify(record)
    assert record["files"] == ref["files"] or record["content_hash"] == ref["content_hash"]
    shards = pl.concat([pl.read_parquet(p) for p in sorted((Path(record["path"]) / "data").glob("*.parquet"))])
    assert shards.height == selected.height and shards.select(KEY).is_unique().all()  # no row lost or doubled
    leftovers = [p.name for p in hub.joinpath("killtest").iterdir() if p.name.startswith(".tmp-")]
    assert not leftovers, leftovers  # builds cut short are cleared by the next commit
