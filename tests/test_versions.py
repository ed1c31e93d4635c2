"""The one versioned-artifact store (foundations.versions): immutability, atomicity, next versions, the lock."""
from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

from foundations.versions import VersionStore, next_version, parse_version


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def writer(payload: str):
    def write(folder, record):
        (folder / "payload.txt").write_text(payload)
        (folder / "sub").mkdir()
        (folder / "sub" / "more.txt").write_text(record["version"])
        return {"size": len(payload)}

    return write


def commit(store: VersionStore, name: str, payload: str, **kw):
    return store.commit(name, digest(payload), writer(payload), **kw)


def test_next_version_and_parsing():
    assert next_version(None) == "1.0.0"
    assert next_version("1.0.0") == "1.1.0"
    assert next_version("v1.9.3") == "1.10.0"
    assert next_version("1.4.0", breaking=True) == "2.0.0"
    assert parse_version("v2.10.1") == (2, 10, 1)
    with pytest.raises(ValueError, match="use 'latest', '1.2.0' or 'v1.2.0'"):
        parse_version("newest")


def test_versions_are_immutable_folders_with_a_record(data_root):
    store = VersionStore("things", kind="thing")
    first, created = commit(store, "box", "one", fields={"note": "first"})
    assert created and first["version"] == "1.0.0" and first["parent_version"] is None
    path = data_root / "things" / "box" / f"v1.0.0-{digest('one')[:8]}"
    assert first["path"] == str(path)
    record = json.loads((path / "version.json").read_text())
    assert record["note"] == "first" and record["size"] == 3 and record["content_hash"] == digest("one")
    assert record["files"] == {"payload.txt": digest("one"), "sub/more.txt": digest("1.0.0")}

    again, created = commit(store, "box", "one")  # same content as the latest: nothing new
    assert not created and again["path"] == first["path"]

    second, created = commit(store, "box", "two")
    assert created and (second["version"], second["parent_version"]) == ("1.1.0", "1.0.0")
    major, _ = commit(store, "box", "three", breaking=lambda latest: latest["version"] == "1.1.0")
    assert major["version"] == "2.0.0"
    assert (path / "payload.txt").read_text() == "one"  # older versions stay as they were

    assert [r["version"] for r in store.list_versions("box")] == ["1.0.0", "1.1.0", "2.0.0"]
    assert store.resolve("box")["version"] == "2.0.0"
    assert store.resolve("box", "v1.1.0")["path"] == second["path"]
    assert store.resolve("box", "1.0.0")["content_hash"] == digest("one")
    with pytest.raises(LookupError, match="thing 'box' has no version '1.7.0'"):
        store.resolve("box", "1.7.0")
    with pytest.raises(LookupError, match="thing 'nothing' has no published versions"):
        store.resolve("nothing")
    with pytest.raises(ValueError, match="name '../x'"):
        store.folder("../x")

    store.verify(store.resolve("box", "1.0.0"))
    (path / "payload.txt").write_text("tampered")
    with pytest.raises(OSError, match="payload.txt of thing box v1.0.0"):
        store.verify(store.resolve("box", "1.0.0"))


def test_a_failed_build_leaves_nothing(data_root):
    store = VersionStore("things")

    def crash(folder, record):
        (folder / "half.bin").write_bytes(b"\0" * 1000)
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store.commit("box", digest("x"), crash)
    folder = data_root / "things" / "box"
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []  # not even a hidden build folder
    assert store.list_versions("box") == []
    # Stray folders and unreadable versions are not versions.
    (folder / "notes").mkdir()
    (folder / "v9.0.0-deadbeef").mkdir()
    assert store.list_versions("box") == []
    assert commit(store, "box", "x")[0]["version"] == "1.0.0"


def test_concurrent_writers_never_share_a_version(data_root):
    store = VersionStore("things")
    n = 6
    barrier = threading.Barrier(n)
    results: list[dict] = []

    def run(i: int) -> None:
        barrier.wait()
        results.append(commit(store, "box", f"payload {i}")[0])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(parse_version(r["version"]) for r in results)
    assert versions == [(1, i, 0) for i in range(n)]
    assert len(store.list_versions("box")) == n


def test_the_lock_holds_other_writers_back(data_root):
    store = VersionStore("things")
    done = threading.Event()

    def write_one() -> None:
        commit(store, "box", "late")
        done.set()

    with store.lock("box"):
        thread = threading.Thread(target=write_one)
        thread.start()
        time.sleep(0.3)
        assert not done.is_set() and store.list_versions("box") == []
    thread.join(timeout=10)
    assert done.is_set() and store.resolve("box")["version"] == "1.0.0"


def test_datasets_and_checkpoints_share_the_store():
    """publish and checkpoints keep no version logic of their own."""
    from foundations import publish
    from training import checkpoints

    assert publish._store(None) == VersionStore("hub", kind="dataset")
    assert checkpoints.STORE == VersionStore("checkpoints", kind="checkpoint")
    assert not hasattr(publish, "_next_version") and not hasattr(publish, "_publish_lock")
