"""The referee's judgement cache: one SQLite file under `<data root>/cache/referee/`.

A judgement is keyed by (model_id, prompt template, content hash of the segment text), so
a re-run over the same segments with the same model and prompt asks the model nothing.
SQLite gives atomic, concurrent-safe writes for free (each `put` is one transaction; WAL
lets readers proceed while another process writes), which a folder of JSON files would not.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from foundations.storage import area

CACHE_FILE = "judgements.sqlite"
_CHUNK = 500  # SQLite's limit on bound parameters is 999 in old builds; stay well below it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    model_id TEXT NOT NULL,
    template TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    probs TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (model_id, template, content_hash)
)
"""


def default_cache_path() -> Path:
    """`<data root>/cache/referee/judgements.sqlite`."""
    folder = area("cache") / "referee"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / CACHE_FILE


class JudgementCache:
    """Label probabilities of judged prompts, keyed by model, template and content hash."""

    def __init__(self, path: Path | str | None = None, timeout_s: float = 60.0):
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits (or rolls back) one transaction and is always closed."""
        db = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            with db:
                yield db
        finally:
            db.close()

    def get(self, model_id: str, template: str, hashes: Iterable[str]) -> dict[str, dict[str, float]]:
        """The cached probabilities of those `hashes` that were judged before (others are absent)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, dict[str, float]] = {}
        with self._connect() as db:
            for i in range(0, len(wanted), _CHUNK):
                chunk = wanted[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT content_hash, probs FROM judgements WHERE model_id = ? AND template = ? "
                    f"AND content_hash IN ({marks})",
                    [model_id, template, *chunk],
                )
                found.update((h, json.loads(p)) for h, p in rows)
        return found

    def put(self, model_id: str, template: str, judgements: Mapping[str, Mapping[str, float]]) -> None:
        """Store judgements (content hash -> label probabilities) in one transaction."""
        now = time.time()
        rows = [(model_id, template, h, json.dumps(dict(p)), now) for h, p in judgements.items()]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?)", rows)

    def count(self, model_id: str | None = None) -> int:
        """Number of cached judgements (of one model, or of all)."""
        with self._connect() as db:
            if model_id is None:
                return db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
            return db.execute("SELECT COUNT(*) FROM judgements WHERE model_id = ?", [model_id]).fetchone()[0]
