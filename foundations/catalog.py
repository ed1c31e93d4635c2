"""Where the declarations live: the `datasets/` folder (or `$ROBOCURATE_RECIPES`) and its kinds.

    <folder>/<recipe>.yaml             dataset recipes          (foundations.recipes)
    <folder>/sources/<source>.yaml     source mappings          (foundations.ingest.mapping)
    <folder>/robots/<robot>.yaml       robot profiles           (foundations.profile)
    <folder>/targets/<target>.yaml     training targets         (foundations.targets)

Every config model is a pydantic model; `config_error` turns its validation errors into one
message per bad key, naming the file, the key path and what was wrong.
"""
from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

RECIPES_ENV = "ROBOCURATE_RECIPES"
KINDS = ("recipes", "sources", "robots", "targets")


def config_dir() -> Path:
    """`$ROBOCURATE_RECIPES`, else the repository's `datasets/` folder."""
    env = os.environ.get(RECIPES_ENV)
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[1] / "datasets"


def kind_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown config kind {kind!r}; one of {', '.join(KINDS)}")
    return config_dir() if kind == "recipes" else config_dir() / kind


def list_configs(kind: str) -> list[str]:
    """Names (file stems) of every YAML file of a kind, sorted."""
    folder = kind_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.is_file()) if folder.is_dir() else []


def config_path(kind: str, name_or_path: str | Path, error: type[Exception] = FileNotFoundError) -> Path:
    """The file of a config: a bare name resolves in its kind's folder; a path (with '/' or '.yaml') is used as is."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        path = Path(name_or_path)
    else:
        path = kind_dir(kind) / f"{text}.yaml"
    if not path.is_file():
        known = list_configs(kind)
        raise error(f"no {kind[:-1]} {text!r}: {path} does not exist (known: {', '.join(known) or 'none'})")
    return path


def config_error(path: Path | str, exc: ValidationError) -> str:
    """One line per problem: `file: key 'a.b': what is wrong`."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a typo? see the format documented beside the file)"
        elif err["type"] == "missing":
            msg = "is required but missing"
        lines.append(f"{path}: key '{key}': {msg}")
    return "\n".join(lines)


def load_model(kind: str, name_or_path: str | Path, model: type[M], error: type[Exception]) -> M:
    """Read, validate and name-check one YAML config of `kind` as `model` (cached until the file changes).

    Raises `error` naming the file and key: missing file, invalid YAML, invalid keys, or a
    `name` that differs from the file name. The model gets `path` set to the file.
    """
    path = config_path(kind, name_or_path, error)
    return _load_model(path, path.stat().st_mtime_ns, model, error)


@cache
def _load_model(path: Path, mtime_ns: int, model: type[M], error: type[Exception]) -> M:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        loaded = model.model_validate(raw)
    except ValidationError as exc:
        raise error(config_error(path, exc)) from None
    if getattr(loaded, "name", path.stem) != path.stem:
        raise error(f"{path}: key 'name': {loaded.name!r} but the file is {path.name}; make them match")
    return loaded.model_copy(update={"path": path})
