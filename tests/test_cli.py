"""The command line as a user meets it: landing folders, status of every file, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from foundations import landing
from pipelines.cli import main

SOURCE = "ant_fleet_ros2"


def _tree(root: Path) -> Path:
    """Two robots that reuse a file name, as fleets do."""
    for robot, payload in (("robot_a", b"first"), ("robot_b", b"second")):
        (root / robot).mkdir(parents=True)
        (root / robot / "run_00000.mcap").write_bytes(payload)
    return root


def test_land_copies_a_folder_with_sub_folders(tmp_path, capsys):
    assert main(["land", str(_tree(tmp_path / "logs")), "--source", SOURCE, "--batch", "site-b"]) == 0
    assert "landed 2 files as batch ant_fleet_ros2/site-b" in capsys.readouterr().out
    key = f"{SOURCE}/site-b"
    files = [landing.relative_name(p, key) for p in landing.batch_files(key, "*.mcap")]
    assert files == ["robot_a/run_00000.mcap", "robot_b/run_00000.mcap"]


def test_status_lists_every_landed_file_before_ingestion(tmp_path, capsys):
    main(["land", str(_tree(tmp_path / "logs")), "--source", SOURCE, "--batch", "b1"])
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["source"], r["landing_batch"], r["file"], r["outcome"]) for r in rows] == [
        (SOURCE, "b1", "robot_a/run_00000.mcap", "pending"), (SOURCE, "b1", "robot_b/run_00000.mcap", "pending")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["download", "ant_skills", "--version", "9.9.9", "--to", "snap"], "ant_skills"),
        (["land", "no/such/file.mcap", "--source", SOURCE], "does not exist"),
        (["land", "README.md", "--source", "no_such_source"], "no source 'no_such_source'"),
        (["versions", "no_such_dataset"], ""),
    ],
)
def test_errors_are_one_line_without_traceback(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    argv = [a if a != "snap" else str(tmp_path / "snap") for a in argv]
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], capture_output=True, text=True, timeout=120)
    if argv[0] == "versions":  # not an error: an unknown dataset simply has no versions
        assert proc.returncode == 0 and "no published versions" in proc.stdout
        return
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"robocurate {argv[0]}: ") and message in lines[0]
