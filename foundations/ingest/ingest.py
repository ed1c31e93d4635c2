"""Ingest log files into the canonical episode table, quarantining what is bad.

`ingest_file` never raises on bad input: an unreadable file, a missing topic, a
mapped field that does not fit the messages or a malformed episode becomes a
quarantine record (stage "ingest") with a reason that says what to fix. A file cut short
while recording (or damaged) keeps what the reader recovered: the episode open at the cut
becomes a truncated episode (`trims.truncated`, with the reason), not a lost file. The reader
is the one registered for the mapping's `format` (foundations.ingest.formats).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from foundations.ingest.align import TRIMS_SCHEMA, Lineage, build_episodes, prepare_log
from foundations.ingest.formats import reader_for
from foundations.ingest.mapping import SourceMapping
from foundations.ingest.mcap_source import FieldMismatch, McapLog, UnreadableLog
from foundations.schema import POLARS_SCHEMA, QUARANTINE_SCHEMA, episode_id
from foundations.storage import sha256_file


# Labels a file gives its episodes (robomimic's mask/ filter keys: better, okay, worse, train...): one row per label.
LABELS_SCHEMA: dict[str, pl.DataType] = {
    "episode_id": pl.String, "source": pl.String, "source_file": pl.String, "source_sha256": pl.String,
    "episode_name": pl.String,  # the episode's name in its file (demo_3)
    "label": pl.String,
}


@dataclass
class IngestResult:
    """Canonical rows (POLARS_SCHEMA + the mapping's extra features), quarantine records and trims.

    `trims` (TRIMS_SCHEMA) has one row per ingested episode: the control steps cut at its start
    (before every stream had delivered) and end (after a stream stopped), zeros when none, and
    whether the episode is truncated (its file was cut short while recording; kept, with the reason),
    and the optional streams its file lacked (`absent_streams`: its rows have no column for their features).
    """

    episodes: pl.DataFrame
    quarantine: pl.DataFrame
    trims: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=TRIMS_SCHEMA))
    messages: int = 0  # messages decoded (throughput accounting)
    files: int = 0
    labels: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LABELS_SCHEMA))  # LABELS_SCHEMA


def empty_result(mapping: SourceMapping) -> IngestResult:
    """An empty result with the exact columns `ingest_file` produces for `mapping`."""
    images = mapping.image_features
    schema = dict(POLARS_SCHEMA) | {name: pl.Binary if name in images else pl.List(pl.Float32) for name in mapping.extra_features}
    return IngestResult(pl.DataFrame(schema=schema), pl.DataFrame(schema=QUARANTINE_SCHEMA), pl.DataFrame(schema=TRIMS_SCHEMA))


def _file_rejection(mapping: SourceMapping, source_file: str, sha: str | None, checks: list[tuple[str, str]], messages: int = 0) -> IngestResult:
    result = empty_result(mapping)
    result.quarantine = pl.DataFrame(
        {
            "episode_id": [None] * len(checks),
            "source": [mapping.name] * len(checks),
            "source_file": [source_file] * len(checks),
            "source_sha256": [sha] * len(checks),
            "stage": ["ingest"] * len(checks),
            "check": [c for c, _ in checks],
            "reason": [r for _, r in checks],
        },
        schema=QUARANTINE_SCHEMA,
    )
    result.messages, result.files = messages, 1
    return result


def _robot_id(log: McapLog, mapping: SourceMapping, path: Path, source_file: str) -> str:
    """The mapping's robot_id: fixed, else the metadata record, else a folder of source_file, else the file stem."""
    spec = mapping.robot_id
    if spec.value is not None:
        return spec.value
    if spec.metadata is not None:
        value = log.metadata.get(spec.metadata, {}).get(spec.key or "")
        if value:
            return value
    folders = source_file.split("/")[:-1]
    if spec.folder is not None and spec.folder < len(folders):
        return folders[spec.folder]
    return path.stem


def _topic_problems(log: McapLog, mapping: SourceMapping) -> list[tuple[str, str]]:
    problems = []
    found = ", ".join(log.topics_found) or "no topics"
    for topic in mapping.required_topics:
        if topic not in log.topics_found:
            problems.append(("missing_topic", (
                f"required topic {topic} not in file (found: {found}); fix the recording or map the topic "
                f"in {mapping.file_hint}")))
        elif not log.frames[topic].height:
            check = "no_control_messages" if topic == mapping.control.topic else "empty_topic"
            problems.append((check, f"required topic {topic} has no readable messages in this file; re-export the log"))
    return problems


def ingest_file(path: Path, mapping: SourceMapping, sha256: str | None = None, source_file: str | None = None) -> IngestResult:
    """Turn one log file (or log folder) into canonical episode rows plus quarantine records; never raises on bad input.

    `sha256` is the file's content hash when the caller already has it (it keys
    the episode ids); otherwise it is computed here. `source_file` is the file's path
    relative to its landing batch (its identity with the hash); default: the file name.
    """
    path = Path(path)
    source_file = source_file or path.name
    if sha256 is None:
        try:
            sha256 = sha256_file(path)
        except OSError as exc:
            return _file_rejection(mapping, source_file, None, [("unreadable_file", f"cannot read file: {exc}; check the landing area")])
    try:
        log = reader_for(mapping.format)(path, mapping)
    except UnreadableLog as exc:
        return _file_rejection(mapping, source_file, sha256, [(
            f"unreadable_{mapping.format}", f"unreadable {mapping.format.upper()} (truncated or corrupt): {exc}; re-export the log")])
    except FieldMismatch as exc:
        return _file_rejection(mapping, source_file, sha256, [(
            "field_mismatch", f"{exc}; fix the recording or the field in {mapping.file_hint}")])
    lost = [(
        "lost_chunks",
        f"{len(log.lost_chunks)} MCAP chunk(s) unreadable (first: {log.lost_chunks[0][2]}); "
        "episodes overlapping them were quarantined, the rest salvaged; re-export the log",
    )] if log.lost_chunks else []
    # An optional stream the file lacks (or logged empty): its features are left out of this file's rows.
    absent = [t for t in mapping.optional_topics if t not in log.topics_found or not log.frames[t].height]
    full, mapping = mapping, mapping.without_topics(absent) if absent else mapping
    problems = _topic_problems(log, mapping) or prepare_log(log, mapping)
    if problems and log.truncated:
        lost.insert(0, ("truncated_file", f"recovered part of a file cut short: {log.truncated}"))
    if problems:
        return _file_rejection(full, source_file, sha256, lost + problems, log.messages)
    lineage = Lineage(mapping.name, source_file, sha256, _robot_id(log, mapping, path, source_file))
    episodes, quarantine, trims = build_episodes(log, mapping, lineage)
    trims = trims.with_columns(pl.lit(absent, dtype=TRIMS_SCHEMA["absent_streams"]).alias("absent_streams"))
    if lost:
        quarantine = pl.concat([_file_rejection(full, source_file, sha256, lost).quarantine, quarantine])
    return IngestResult(episodes, quarantine, trims, log.messages, 1, _labels(log, lineage))


def _labels(log: McapLog, lineage: Lineage) -> pl.DataFrame:
    """The file's labels per episode (episode k of a reader-marked file is alignment's interval k)."""
    names, labels = getattr(log, "episode_names", []), getattr(log, "episode_labels", [])
    rows = [(episode_id(lineage.source_sha256, k), names[k], label) for k in range(len(labels)) for label in labels[k]]
    return pl.DataFrame(
        {"episode_id": [r[0] for r in rows], "source": [lineage.source] * len(rows),
         "source_file": [lineage.source_file] * len(rows), "source_sha256": [lineage.source_sha256] * len(rows),
         "episode_name": [r[1] for r in rows], "label": [r[2] for r in rows]},
        schema=LABELS_SCHEMA,
    )


PARALLEL_MIN_BYTES = 32 << 20  # below this, starting worker processes costs more than it saves


def default_workers(paths: Iterable[Path]) -> int:
    """Processes for `ingest_files`: every available core when the files are big enough to pay for them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores <= 1 or multiprocessing.current_process().daemon:  # a daemonic process (a pool worker) may not have children
        return 1
    try:
        size = sum(Path(p).stat().st_size for p in paths)
    except OSError:
        return 1
    return cores if size >= PARALLEL_MIN_BYTES else 1


_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    """A pool kept for the life of the process: its workers have imported the decoders once."""
    pool = _POOLS.get(workers)
    if pool is None:
        # spawn, not fork: forking a process that has polars' thread pool running can deadlock.
        pool = _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return pool


def ingest_files(
    paths: Iterable[Path],
    mapping: SourceMapping,
    hashes: Mapping[str | Path, str] | None = None,
    progress: bool = True,
    workers: int | None = None,
    batch_dir: Path | None = None,
) -> IngestResult:
    """Ingest many files (a tqdm bar shows progress) and concatenate their results in input order.

    `hashes` maps a path (as given, or its string) to its known sha256.
    `workers` > 1 ingests files in that many processes, each file whole in one of them (the results
    are merged in input order, whatever order they finish in); None: `default_workers`, every core
    when the files are big enough. `batch_dir`: the landing batch the files sit in; each file's
    `source_file` is then its POSIX path relative to it (`robot_07/run_00000.mcap`), else its name.
    Raises ValueError for a path outside `batch_dir`.
    """
    hashes = hashes or {}
    paths = list(paths)
    jobs = [(Path(p), hashes.get(p) or hashes.get(str(p)), _relative(Path(p), batch_dir)) for p in paths]
    workers = default_workers(paths) if workers is None else workers
    bar = tqdm(total=len(jobs), desc=f"ingest {mapping.name}", unit="file", disable=not progress)
    parts = [empty_result(mapping)]
    if workers > 1 and len(jobs) > 1:
        pool = _pool(workers)
        try:
            for part in pool.map(ingest_file, *zip(*[(path, mapping, sha, rel) for path, sha, rel in jobs])):
                parts.append(part)
                bar.update()
        except BrokenProcessPool:
            del _POOLS[workers]  # a worker died (killed, out of memory): the next call starts a new pool
            raise
    else:
        for path, sha, rel in jobs:
            parts.append(ingest_file(path, mapping, sha, rel))
            bar.update()
    bar.close()
    return IngestResult(
        # diagonal: a file without an optional stream has no column for its features (null in its rows)
        episodes=pl.concat([p.episodes for p in parts], how="diagonal"),
        quarantine=pl.concat([p.quarantine for p in parts], how="vertical"),
        trims=pl.concat([p.trims for p in parts], how="vertical"),
        messages=sum(p.messages for p in parts),
        files=len(paths),
        labels=pl.concat([p.labels for p in parts], how="vertical"),
    )


def _relative(path: Path, batch_dir: Path | None) -> str:
    """A file's identity in its batch: its POSIX path relative to the batch folder (its name without one)."""
    if batch_dir is None:
        return path.name
    try:
        return path.resolve().relative_to(Path(batch_dir).resolve()).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the landing batch {batch_dir}; pass the batch folder that holds it") from None
