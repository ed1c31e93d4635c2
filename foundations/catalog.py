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
from pathlib import Path

from pydantic import ValidationError

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
        lines.append(f"{path}: key '{key}': {msg}")
    return "\n".join(lines)
