"""Export a published dataset version to the layouts learners load with their own tools.

`export(name, version, "lerobot" | "minari", to)` reads one immutable version from the hub
(foundations.publish) and writes:

- lerobot: a LeRobot v3.0 dataset folder at `to` (foundations.export.lerobot), loaded with
  `LeRobotDataset(repo_id, root=to)`;
- minari: a Minari dataset under the datasets root `to` (foundations.export.minari), loaded with
  `minari.load_dataset("robocurate/<name>-v<N>")` when `MINARI_DATASETS_PATH=to`.

Each is built in a hidden folder beside its destination and renamed into place, so a failed
export leaves nothing half-written. What an export cannot carry (a feature whose length varies,
a single-step episode in Minari) is left out and named, with the reason, in the result and in
the exported metadata.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from foundations.export.published import load_published
from foundations.publish import list_versions, resolve_version
from foundations.storage import AtomicDir

FORMATS = ("lerobot", "minari")


@dataclass(frozen=True)
class ExportResult:
    format: str
    name: str
    version: str
    path: Path  # the LeRobot folder; the Minari dataset's folder (<root>/<namespace>/<name>-v<N>)
    episodes: int
    frames: int  # LeRobot: step rows; Minari: transitions
    reward: str | None  # the published column the rewards come from
    load: str  # how to load it, for the user
    left_out: dict[str, str] = field(default_factory=dict)


def export(name: str, version: str, fmt: str, to: Path, *, reward: str | None = None,
           root: Path | None = None) -> ExportResult:
    """Export version `version` ("latest", "1.2.0" or "v1.2.0") of dataset `name` as `fmt` to `to`.

    `reward` names the published column the rewards come from (default: the first of combined_reward,
    reward, referee_reward, progress_reward with a value on every step). `root` is the hub folder (default:
    the data root's `hub/`). Raises ValueError for an unknown format or unusable reward
    column, LookupError for an unknown dataset or version, FileExistsError when the destination is taken.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    record = resolve_version(name, version, root=root)
    pub = load_published(record, reward)
    to = Path(to).expanduser().resolve()
    if fmt == "lerobot":
        from foundations.export.lerobot import write_lerobot

        if to.exists() and (not to.is_dir() or any(to.iterdir())):
            raise FileExistsError(f"{to} exists and is not empty; export to a new or empty folder")
        if to.is_dir():
            to.rmdir()  # AtomicDir renames the finished folder into place
        with AtomicDir(to) as tmp:
            summary = write_lerobot(pub, tmp)
        path = to
        load = f'LeRobotDataset("robocurate/{name}", root="{to}")'
    else:
        from foundations.export.minari import NAMESPACE, dataset_id, write_minari

        ordinal = [r["version"] for r in list_versions(name, root=root)].index(record["version"]) + 1
        ds_id = dataset_id(name, ordinal)
        path = to / ds_id
        if path.exists():
            raise FileExistsError(f"{path} exists: Minari dataset {ds_id} was exported there before; "
                                  "delete it or export to another root")
        _namespace(to / NAMESPACE)
        with AtomicDir(path) as tmp:
            summary = write_minari(pub, tmp / "data", ordinal)
        load = f'MINARI_DATASETS_PATH="{to}" and minari.load_dataset("{ds_id}")'
    return ExportResult(format=fmt, name=name, version=record["version"], path=path, episodes=summary["episodes"],
                        frames=summary["frames"], reward=summary["reward"], load=load, left_out=summary["left_out"])


def _namespace(folder: Path) -> None:
    """Minari's namespace marker (what `minari.create_namespace` writes), when the namespace is new."""
    from minari.namespace import NAMESPACE_METADATA_FILENAME

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / NAMESPACE_METADATA_FILENAME
    if not marker.exists():
        marker.write_text(json.dumps({"description": "datasets exported by robocurate"}), encoding="utf-8")


__all__ = ["FORMATS", "ExportResult", "export"]
