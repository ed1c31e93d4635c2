"""The one versioned-artifact store: published datasets and policy checkpoints alike.

A version is an immutable folder `<data root>/<area>/<name>/v<semver>-<hash8>/` whose
`version.json` is the record: name, version, content hash (its first 8 hex digits name
the folder), parent version, creation time, the sha256 of every other file, plus what the
caller adds (a dataset's schema and splits, a checkpoint's training key). A version is
built in a hidden temporary folder and renamed into place (foundations.storage.AtomicDir),
so a crash leaves no visible half-written version (the next commit clears such hidden
builds), and one lock per name serialises writers, so two runs never claim the same version number.

Versions go 1.0.0, 1.1.0, 1.2.0, ...; a breaking change (the caller says what breaks)
bumps the major version. Committing the latest version's content again writes nothing
and returns that version.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from foundations.storage import AtomicDir, area, sha256_file

log = logging.getLogger(__name__)

RECORD = "version.json"
LOCK = ".lock"
_FOLDER = re.compile(r"^v(\d+)\.(\d+)\.(\d+)-[0-9a-f]{8}$")
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HASH = re.compile(r"^[0-9a-f]{8,}$")


def parse_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) of "1.2.0" or "v1.2.0"; ValueError says what is accepted."""
    m = _SEMVER.match(str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a version; use 'latest', '1.2.0' or 'v1.2.0'")
    return int(m[1]), int(m[2]), int(m[3])


def next_version(latest: Optional[str], *, breaking: bool = False) -> str:
    """1.0.0 first; then the minor version goes up, or the major one for a breaking change."""
    if latest is None:
        return "1.0.0"
    major, minor, _ = parse_version(latest)
    return f"{major + 1}.0.0" if breaking else f"{major}.{minor + 1}.0"


@dataclass(frozen=True)
class VersionStore:
    """Versions of named artifacts under one area of the data root (e.g. "hub", "checkpoints").

    `root` overrides the area's folder (tests, or a second hub); `kind` names the
    artifacts in messages ("dataset", "checkpoint").
    """

    area: str
    kind: str = "artifact"
    root: Optional[Path] = None

    def folder(self, name: str) -> Path:
        """The folder holding every version of `name` (not created)."""
        if not _NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '_', '.' or '-'")
        return (Path(self.root) if self.root is not None else area(self.area)) / name

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Exclusive lock on `name` (an flock on `<name>/.lock`), held by one writer at a time."""
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOCK, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of `name`, oldest first by semver: its record plus `path`."""
        folder = self.folder(name)
        if not folder.is_dir():
            return []
        versions = []
        for path in folder.iterdir():
            if not (path.is_dir() and _FOLDER.match(path.name)):
                continue  # hidden temporary builds and stray files are not versions
            try:
                record = json.loads((path / RECORD).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("%s is not a readable version (%s); ignored", path, exc)
                continue
            versions.append({**record, "path": str(path)})
        return sorted(versions, key=lambda r: parse_version(r["version"]))

    def latest(self, name: str) -> Optional[dict[str, Any]]:
        versions = self.list_versions(name)
        return versions[-1] if versions else None

    def resolve(self, name: str, version: str = "latest") -> dict[str, Any]:
        """The record of "latest", "1.2.0" or "v1.2.0"; LookupError when absent."""
        versions = self.list_versions(name)
        if not versions:
            raise LookupError(f"{self.kind} {name!r} has no published versions")
        if version == "latest":
            return versions[-1]
        wanted = parse_version(version)
        for record in versions:
            if parse_version(record["version"]) == wanted:
                return record
        raise LookupError(
            f"{self.kind} {name!r} has no version {version!r}; published: {[r['version'] for r in versions]}"
        )

    def commit(
        self,
        name: str,
        content_hash: str,
        write: Callable[[Path, dict[str, Any]], Optional[dict[str, Any]]],
        *,
        fields: Optional[dict[str, Any]] = None,
        breaking: Callable[[dict[str, Any]], bool] = lambda latest: False,
    ) -> tuple[dict[str, Any], bool]:
        """Store a new version of `name` unless the latest one has `content_hash`; returns (record, created).

        Under the name's lock: the next version is chosen (`breaking(latest record)` asks for a
        major bump), the record {name, version, content_hash, created_at, parent_version,
        **fields} is made, and `write(folder, record)` fills a hidden folder; what it returns is
        added to the record. The store then records every file's sha256 and renames the folder
        into place. An exception inside `write` leaves nothing behind.
        """
        if not _HASH.match(content_hash):
            raise ValueError(f"content hash {content_hash!r} must be lower-case hex, at least 8 digits")
        with self.lock(name):
            self._clear_cut_builds(name)
            latest = self.latest(name)
            if latest is not None and latest["content_hash"] == content_hash:
                log.info("%s %s: content unchanged since v%s", self.kind, name, latest["version"])
                return latest, False
            version = next_version(latest["version"] if latest else None,
                                   breaking=latest is not None and breaking(latest))
            record = {
                "name": name,
                "version": version,
                "content_hash": content_hash,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "parent_version": latest["version"] if latest else None,
                **(fields or {}),
            }
            final = self.folder(name) / f"v{version}-{content_hash[:8]}"
            with AtomicDir(final) as tmp:
                record = {**record, **(write(tmp, dict(record)) or {})}
                record["files"] = {
                    p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
                }
                (tmp / RECORD).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
            log.info("%s %s: stored v%s (%s) at %s", self.kind, name, version, content_hash[:8], final)
            return {**record, "path": str(final)}, True

    def _clear_cut_builds(self, name: str) -> None:
        """Remove hidden builds of a writer killed mid-write (call under the name's lock: no build is live)."""
        for path in self.folder(name).glob(".tmp-v*"):
            if path.is_dir():
                log.warning("removing %s, a build cut short (the process writing it was killed)", path)
                shutil.rmtree(path, ignore_errors=True)

    def verify(self, record: dict[str, Any]) -> None:
        """Raise OSError naming the first file of a version whose sha256 differs from its record."""
        path = Path(record["path"])
        for rel, digest in (record.get("files") or {}).items():
            if sha256_file(path / rel) != digest:
                raise OSError(f"{rel} of {self.kind} {record['name']} v{record['version']} does not match its "
                              "recorded sha256")
