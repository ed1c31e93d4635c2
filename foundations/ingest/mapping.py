"""Source mappings: how one fleet's log topics and fields become canonical features.

A mapping is a YAML file in `datasets/sources/` (format documented in
`datasets/sources/ant_fleet_ros2.yaml`). Loading validates every key, so a typo
fails at load time with a message naming the key, not later as missing data.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from foundations.schema import ACTION, STATE

RECIPES_ENV = "ROBOCURATE_RECIPES"
# Messages of the transforms a field spec may name; each yields one value per message.
TRANSFORMS = {"yaw_from_quaternion": ("w", "x", "y", "z")}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOP_KEYS = {
    "name", "description", "format", "file_glob", "robot_id", "control", "instruction",
    "episode_markers", "reward", "features", "bounds", "skills",
}
_REQUIRED_TOP = ("name", "control", "instruction", "features")
_FIELD_KEYS = {"topic", "field", "size", "components", "transform"}


class MappingError(ValueError):
    """A source mapping YAML is malformed; the message names the key and the fix."""


@dataclass(frozen=True)
class FieldSpec:
    """One piece of a feature: a message field of one topic, flattened to `width` floats."""

    topic: str
    field: str  # dotted attribute path inside the decoded message, e.g. pose.pose.position
    size: int | None = None  # the field is an array of exactly this many numbers
    components: tuple[str, ...] | None = None  # sub-fields of a message field, in this order
    transform: str | None = None  # a name in TRANSFORMS

    @property
    def width(self) -> int:
        if self.size is not None:
            return self.size
        if self.components is not None:
            return len(self.components)
        return 1

    @property
    def paths(self) -> tuple[str, ...]:
        """The dotted scalar/array paths this spec reads from each message."""
        if self.transform is not None:
            return tuple(f"{self.field}.{c}" for c in TRANSFORMS[self.transform])
        if self.components is not None:
            return tuple(f"{self.field}.{c}" for c in self.components)
        return (self.field,)

    def names(self) -> list[str]:
        """Per-dimension names, e.g. `/joint_states.position[3]` (for dataset metadata)."""
        base = f"{self.topic}.{self.field}"
        if self.transform is not None:
            return [f"{base}:{self.transform}"]
        if self.components is not None:
            return [f"{base}.{c}" for c in self.components]
        if self.size is not None:
            return [f"{base}[{i}]" for i in range(self.size)]
        return [base]


@dataclass(frozen=True)
class ControlSpec:
    topic: str  # one control step per message on this topic
    rate_hz: float
    tolerance_s: float  # a state message older than this at a control step counts as missing


@dataclass(frozen=True)
class TextSpec:
    topic: str
    field: str


@dataclass(frozen=True)
class MarkerSpec:
    topic: str
    field: str
    start: str
    end: str
    terminal: str | None


@dataclass(frozen=True)
class RobotIdSpec:
    """Robot id from an MCAP metadata record (`metadata`, `key`) or a fixed `value`."""

    metadata: str | None = None
    key: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class SkillSpec:
    measure: str
    target: float


@dataclass(frozen=True)
class SourceMapping:
    """A validated source mapping (see `load_mapping`)."""

    name: str
    format: str
    file_glob: str
    robot_id: RobotIdSpec
    control: ControlSpec
    instruction: TextSpec
    episode_markers: MarkerSpec | None
    reward: FieldSpec | None
    features: dict[str, tuple[FieldSpec, ...]]  # canonical name -> pieces, in order
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    skills: dict[str, SkillSpec] = field(default_factory=dict)
    description: str = ""
    path: Path | None = None
    fingerprint: str = ""  # sha256 of the YAML text: re-ingest when the mapping changes

    @property
    def action_bounds(self) -> tuple[float, float]:
        """`bounds.action` as (low, high); unbounded when the mapping declares none."""
        return self.bounds.get(ACTION, (-math.inf, math.inf))

    @property
    def file_hint(self) -> str:
        """Where a user fixes this mapping, for error messages."""
        return f"datasets/sources/{self.path.name if self.path else self.name + '.yaml'}"

    @property
    def extra_features(self) -> list[str]:
        """Features beyond the canonical `action` and `observation.state`, in mapping order."""
        return [n for n in self.features if n not in (ACTION, STATE)]

    @property
    def required_topics(self) -> list[str]:
        """Topics a file must contain (the episode-marker topic is optional)."""
        topics = [self.control.topic]
        for pieces in self.features.values():
            topics += [p.topic for p in pieces]
        if self.reward is not None:
            topics.append(self.reward.topic)
        topics.append(self.instruction.topic)
        return list(dict.fromkeys(topics))

    @property
    def topics(self) -> list[str]:
        """Every topic ingestion reads."""
        extra = [self.episode_markers.topic] if self.episode_markers else []
        return list(dict.fromkeys(self.required_topics + extra))

    def feature_width(self, name: str) -> int:
        return sum(p.width for p in self.features[name])

    def feature_names(self, name: str) -> list[str]:
        """Names of each dimension of a feature, in order."""
        return [n for p in self.features[name] for n in p.names()]


def recipes_dir() -> Path:
    """`$ROBOCURATE_RECIPES`, else the repository's `datasets/` folder."""
    env = os.environ.get(RECIPES_ENV)
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "datasets"


def load_mapping(path_or_name: str | Path) -> SourceMapping:
    """Load and validate a source mapping.

    A bare name (`ant_fleet_ros2`) resolves to `<recipes>/sources/<name>.yaml`
    (see `recipes_dir`); anything with a suffix or a slash is a path.
    Raises `MappingError` naming the offending key and what to fix.
    """
    text_path = str(path_or_name)
    if isinstance(path_or_name, Path) or "/" in text_path or text_path.endswith((".yaml", ".yml")):
        path = Path(path_or_name)
    else:
        path = recipes_dir() / "sources" / f"{text_path}.yaml"
    if not path.is_file():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise MappingError(f"no source mapping at {path} (available in {folder}: {known or 'none'})")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{path.name}: not valid YAML: {exc}") from exc
    mapping = parse_mapping(raw, where=path.name)
    return replace(mapping, path=path, fingerprint=hashlib.sha256(text.encode()).hexdigest())


def parse_mapping(raw: Any, where: str = "mapping") -> SourceMapping:
    """Validate an already-parsed YAML document (a dict) into a `SourceMapping`."""
    v = _Validator(where)
    doc = v.mapping(raw, "(top level)", required=_REQUIRED_TOP, allowed=_TOP_KEYS)
    name = v.string(doc["name"], "name")
    fmt = v.string(doc.get("format", "mcap"), "format")
    if fmt != "mcap":
        v.fail("format", f"unsupported format {fmt!r}; only 'mcap' (ROS 2 MCAP) is supported")

    control_raw = v.mapping(doc["control"], "control", required=("topic",), allowed={"topic", "rate_hz", "tolerance_s"})
    rate = v.number(control_raw.get("rate_hz", 20), "control.rate_hz", positive=True)
    control = ControlSpec(
        topic=v.topic(control_raw["topic"], "control.topic"),
        rate_hz=rate,
        tolerance_s=v.number(control_raw.get("tolerance_s", 1.0 / rate), "control.tolerance_s", positive=True),
    )

    instr = v.mapping(doc["instruction"], "instruction", required=("topic",), allowed={"topic", "field"})
    instruction = TextSpec(v.topic(instr["topic"], "instruction.topic"), v.path(instr.get("field", "data"), "instruction.field"))

    markers = None
    if doc.get("episode_markers") is not None:
        m = v.mapping(doc["episode_markers"], "episode_markers", required=("topic", "start", "end"),
                      allowed={"topic", "field", "start", "end", "terminal"})
        markers = MarkerSpec(
            topic=v.topic(m["topic"], "episode_markers.topic"),
            field=v.path(m.get("field", "data"), "episode_markers.field"),
            start=v.string(m["start"], "episode_markers.start"),
            end=v.string(m["end"], "episode_markers.end"),
            terminal=None if m.get("terminal") is None else v.string(m["terminal"], "episode_markers.terminal"),
        )

    reward = None
    if doc.get("reward") is not None:
        reward = v.field_spec(doc["reward"], "reward")
        if reward.width != 1 or reward.size is not None:
            v.fail("reward", "must name one scalar field (no size or components)")

    features_raw = v.mapping(doc["features"], "features", required=(ACTION, STATE))
    features: dict[str, tuple[FieldSpec, ...]] = {}
    for fname, pieces in features_raw.items():
        key = f"features.{fname}"
        if fname != ACTION and not str(fname).startswith("observation."):
            v.fail(key, f"feature names are '{ACTION}' or 'observation.<name>'")
        if not isinstance(pieces, list) or not pieces:
            v.fail(key, "must be a non-empty list of field specs like {topic: /odom, field: pose.pose.position.z}")
        features[fname] = tuple(v.field_spec(p, f"{key}[{i}]") for i, p in enumerate(pieces))

    bounds: dict[str, tuple[float, float]] = {}
    for bname, pair in v.mapping(doc.get("bounds") or {}, "bounds").items():
        key = f"bounds.{bname}"
        if bname not in features:
            v.fail(key, f"no feature named {bname!r} (features: {', '.join(features)})")
        if not isinstance(pair, list) or len(pair) != 2:
            v.fail(key, "must be a list [low, high]")
        lo, hi = v.number(pair[0], key), v.number(pair[1], key)
        if not lo < hi:
            v.fail(key, f"low {lo} must be below high {hi}")
        bounds[bname] = (lo, hi)

    skills: dict[str, SkillSpec] = {}
    for sname, spec in v.mapping(doc.get("skills") or {}, "skills").items():
        key = f"skills.{sname}"
        s = v.mapping(spec, key, required=("measure", "target"), allowed={"measure", "target"})
        skills[str(sname)] = SkillSpec(v.string(s["measure"], f"{key}.measure"), v.number(s["target"], f"{key}.target"))

    return SourceMapping(
        name=name,
        format=fmt,
        file_glob=v.string(doc.get("file_glob", "*.mcap"), "file_glob"),
        robot_id=v.robot_id(doc.get("robot_id")),
        control=control,
        instruction=instruction,
        episode_markers=markers,
        reward=reward,
        features=features,
        bounds=bounds,
        skills=skills,
        description=str(doc.get("description") or ""),
    )


class _Validator:
    """Type checks that raise `MappingError` with the key path and the fix."""

    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, what: str) -> NoReturn:
        raise MappingError(f"{self.where}: key '{key}': {what}")

    def mapping(self, raw: Any, key: str, required: tuple[str, ...] = (), allowed: set[str] | None = None) -> dict:
        if not isinstance(raw, dict):
            self.fail(key, f"must be a mapping of keys, got {type(raw).__name__}")
        for name in raw:
            if allowed is not None and name not in allowed:
                prefix = "" if key == "(top level)" else f"{key}."
                self.fail(f"{prefix}{name}", f"unknown key; allowed here: {', '.join(sorted(allowed))}")
        for name in required:
            if raw.get(name) is None:
                prefix = "" if key == "(top level)" else f"{key}."
                self.fail(f"{prefix}{name}", "is required but missing")
        return raw

    def string(self, raw: Any, key: str) -> str:
        if not isinstance(raw, str) or not raw:
            self.fail(key, f"must be a non-empty string, got {raw!r}")
        return raw

    def number(self, raw: Any, key: str, positive: bool = False) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            self.fail(key, f"must be a finite number, got {raw!r}")
        if positive and raw <= 0:
            self.fail(key, f"must be positive, got {raw!r}")
        return float(raw)

    def topic(self, raw: Any, key: str) -> str:
        text = self.string(raw, key)
        if not text.startswith("/"):
            self.fail(key, f"ROS 2 topic names start with '/', got {text!r}")
        return text

    def path(self, raw: Any, key: str) -> str:
        text = self.string(raw, key)
        if not all(_IDENT.match(part) for part in text.split(".")):
            self.fail(key, f"must be a dotted field path like pose.pose.position, got {text!r}")
        return text

    def field_spec(self, raw: Any, key: str) -> FieldSpec:
        spec = self.mapping(raw, key, required=("topic", "field"), allowed=_FIELD_KEYS)
        size = spec.get("size")
        components = spec.get("components")
        transform = spec.get("transform")
        if sum(x is not None for x in (size, components, transform)) > 1:
            self.fail(key, "use at most one of size, components, transform")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            self.fail(f"{key}.size", f"must be a positive integer (the array length), got {size!r}")
        if components is not None:
            if not isinstance(components, list) or not components or not all(
                isinstance(c, str) and _IDENT.match(c) for c in components
            ):
                self.fail(f"{key}.components", f"must be a non-empty list of field names like [x, y, z], got {components!r}")
            components = tuple(components)
        if transform is not None and transform not in TRANSFORMS:
            self.fail(f"{key}.transform", f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)}")
        return FieldSpec(
            topic=self.topic(spec["topic"], f"{key}.topic"),
            field=self.path(spec["field"], f"{key}.field"),
            size=size,
            components=components,
            transform=transform,
        )

    def robot_id(self, raw: Any) -> RobotIdSpec:
        if raw is None:
            return RobotIdSpec()
        if isinstance(raw, str):
            return RobotIdSpec(value=raw)
        spec = self.mapping(raw, "robot_id", required=("metadata", "key"), allowed={"metadata", "key"})
        return RobotIdSpec(metadata=self.string(spec["metadata"], "robot_id.metadata"), key=self.string(spec["key"], "robot_id.key"))
