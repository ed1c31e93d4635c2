"""Source mappings: how one kind of log's topics and fields become canonical features.

A mapping is `datasets/sources/<source>.yaml` (format: `datasets/sources/README.md`), a pydantic
model validated at load time: an unknown or malformed key fails with a `MappingError` naming the
file, the key path and the fix. It names the robot profile (`robot:`) that describes the
embodiment; the profile's declarations must point at features this mapping produces.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, field_validator, model_validator

from foundations.catalog import config_error, config_path, list_configs
from foundations.ingest.formats import DEFAULT_GLOBS, FORMATS, READER_MARKED
from foundations.profile import ProfileError, RobotProfile, Slice, load_profile
from foundations.schema import ACTION, IMAGE_PREFIX, STATE

# Transforms a field spec may name: each reads these sub-fields of the field and yields one value.
TRANSFORMS = {"yaw_from_quaternion": ("w", "x", "y", "z")}
CLOCKS = ("log_time", "header")
HEADER_STAMP = ("header.stamp.sec", "header.stamp.nanosec")  # ROS 2 std_msgs/Header
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Dotted attribute path whose parts may index arrays: pose.covariance[0], markers[2].pose.position
_PATH = re.compile(r"^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$")
# sensor_msgs/Image fields read beside `data` (a raw frame is encoded to PNG at ingest)
RAW_IMAGE_FIELDS = ("height", "width", "encoding", "step")
# Keys that moved to the robot profile, and what they became there.
_MOVED = {"bounds": "action_bounds: [low, high]", "skills": "skills: {<instruction>: {measure, target}}"}


class MappingError(ValueError):
    """A source mapping YAML is missing or malformed; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_topic(v: str) -> str:
    if not v.startswith("/"):
        raise ValueError(f"ROS topic names start with '/', got {v!r}")
    return v


def _check_path(v: str) -> str:
    if not _PATH.match(v):
        raise ValueError(
            f"must be a dotted field path like pose.pose.position, optionally indexing arrays like "
            f"pose.covariance[0] (non-negative integer indexes), got {v!r}")
    return v


class FieldSpec(_Strict):
    """One piece of a feature: a field of one topic's messages, flattened to `width` floats."""

    topic: str
    field: str  # dotted attribute path inside the decoded message; parts may index arrays (data[3])
    size: PositiveInt | None = None  # the field is an array of exactly this many numbers
    components: tuple[str, ...] | None = None  # sub-fields of a message field, in this order
    transform: Literal["yaw_from_quaternion"] | None = None  # a name in TRANSFORMS
    names: tuple[str, ...] | None = None  # pick array elements by the names in a parallel string array
    name_field: str | None = None  # that string array (default `name`, as in sensor_msgs/JointState)
    # A camera frame: `compressed` (sensor_msgs/CompressedImage: `field` holds JPEG/PNG bytes, kept as they are)
    # or `raw` (sensor_msgs/Image: `field` is the pixel data beside height, width, encoding, step; encoded to PNG).
    image: Literal["raw", "compressed"] | None = None
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None  # declared frame [height, width, channels]

    topic_ok = field_validator("topic")(_check_topic)
    paths_ok = field_validator("field", "name_field")(_check_path)

    @field_validator("components")
    @classmethod
    def _components(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (not v or not all(_IDENT.match(c) for c in v)):
            raise ValueError(f"must be a non-empty list of field names like [x, y, z], got {list(v)!r}")
        return v

    @field_validator("names")
    @classmethod
    def _names(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v or not all(isinstance(n, str) and n for n in v):
            raise ValueError("must be a non-empty list of element names like [joint_1, joint_2]")
        dupes = sorted({n for n in v if v.count(n) > 1})
        if dupes:
            raise ValueError(f"names repeat: {', '.join(dupes)}; each element is picked once")
        return v

    @model_validator(mode="after")
    def _one_shape(self) -> "FieldSpec":
        given = [k for k in ("size", "components", "transform", "names") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"use at most one of size, components, transform, names (got {', '.join(given)})")
        if self.name_field is not None and self.names is None:
            raise ValueError("name_field only goes with names: [...]")
        if self.image is not None and given:
            raise ValueError(f"an image field takes none of size, components, transform, names (got {', '.join(given)})")
        if self.shape is not None and self.image is None:
            raise ValueError("shape: [height, width, channels] only goes with image: raw or image: compressed")
        if self.shape is not None and self.shape[2] not in (1, 3, 4):
            raise ValueError(f"shape: channels must be 1 (mono), 3 (RGB) or 4 (RGBA), got {self.shape[2]}")
        return self

    @property
    def raw_paths(self) -> dict[str, str]:
        """With `image: raw`: the sensor_msgs/Image fields beside `field` (height, width, encoding, step) by name."""
        parent = self.field.rpartition(".")[0]
        return {f: f"{parent}.{f}" if parent else f for f in RAW_IMAGE_FIELDS}

    @property
    def frame_column(self) -> str:
        """Column of the topic's frame holding each message's encoded frame (a raw frame's PNG is built at alignment)."""
        return f"{self.field}<png>" if self.image == "raw" else self.field

    @property
    def width(self) -> int:
        if self.size is not None:
            return self.size
        if self.components is not None:
            return len(self.components)
        if self.names is not None:
            return len(self.names)
        return 1

    @property
    def names_from(self) -> str:
        """The string array that names the elements of `field` (with `names:`)."""
        return self.name_field or "name"

    @property
    def is_list(self) -> bool:
        """True when `field` itself is read as an array of numbers."""
        return self.size is not None or self.names is not None

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths read from each message whose values make this piece (numbers or arrays)."""
        if self.transform is not None:
            return tuple(f"{self.field}.{c}" for c in TRANSFORMS[self.transform])
        if self.components is not None:
            return tuple(f"{self.field}.{c}" for c in self.components)
        return (self.field,)

    @property
    def selected(self) -> str:
        """Column holding the named elements, in `names` order (built at alignment)."""
        return f"{self.field}<{self.names_from}>{','.join(self.names or ())}"

    def dim_names(self) -> list[str]:
        """Per-dimension names, e.g. `/joint_states.position[3]` (for dataset metadata)."""
        base = f"{self.topic}.{self.field}"
        if self.transform is not None:
            return [f"{base}:{self.transform}"]
        if self.components is not None:
            return [f"{base}.{c}" for c in self.components]
        if self.names is not None:
            return [f"{base}[{n}]" for n in self.names]
        if self.size is not None:
            return [f"{base}[{i}]" for i in range(self.size)]
        return [base]


class ControlSpec(_Strict):
    topic: str  # one control step per message on this topic
    rate_hz: PositiveFloat
    tolerance_s: PositiveFloat  # a message older than this at a step counts as missing (default 1/rate_hz)

    topic_ok = field_validator("topic")(_check_topic)

    @model_validator(mode="before")
    @classmethod
    def _default_tolerance(cls, raw: Any) -> Any:
        rate = raw.get("rate_hz") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and raw.get("tolerance_s") is None and isinstance(rate, (int, float)) and rate > 0:
            return raw | {"tolerance_s": 1.0 / rate}
        return raw


class TextSpec(_Strict):
    topic: str
    field: str = "data"

    topic_ok = field_validator("topic")(_check_topic)
    path_ok = field_validator("field")(_check_path)


class MarkerSpec(TextSpec):
    start: str = Field(min_length=1)
    end: str = Field(min_length=1)
    terminal: str | None = Field(None, min_length=1)


class RobotIdSpec(_Strict):
    """Robot id from a metadata record (`metadata`, `key`), else a folder of the file's path in its
    batch (`folder`: 0 is the top one, as `robot_07` in `robot_07/run_00000.mcap`), else the file stem;
    or a fixed `value`."""

    metadata: str | None = Field(None, min_length=1)
    key: str | None = Field(None, min_length=1)
    folder: NonNegativeInt | None = None
    value: str | None = Field(None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _fixed(cls, raw: Any) -> Any:
        return {"value": raw} if isinstance(raw, str) else raw

    @model_validator(mode="after")
    def _pair(self) -> "RobotIdSpec":
        if self.value is None and (self.metadata is None) != (self.key is None):
            raise ValueError("give both metadata (the record name) and key (the key in it), or a fixed string")
        if self.value is not None and (self.metadata, self.key, self.folder) != (None, None, None):
            raise ValueError("a fixed value excludes metadata, key and folder")
        return self


class StreamSpec(_Strict):
    """Per-topic overrides of the mapping-wide alignment settings."""

    tolerance_s: PositiveFloat | None = None
    clock: Literal["log_time", "header"] | None = None
    # A file without this topic is still ingested, without the camera features it feeds (recorded in
    # the trims' absent_streams); only topics that feed camera features alone may be optional.
    optional: bool = False


class SourceMapping(_Strict):
    """A validated source mapping (see `load_mapping` and datasets/sources/README.md)."""

    name: str = Field(min_length=1)
    description: str = ""
    robot: str = Field(min_length=1)  # robot profile datasets/robots/<robot>.yaml
    format: str = "mcap"
    file_glob: str = Field("*.mcap", min_length=1)
    robot_id: RobotIdSpec = RobotIdSpec()
    clock: Literal["log_time", "header"] = "log_time"
    streams: dict[str, StreamSpec] = {}
    control: ControlSpec
    instruction: TextSpec
    episode_markers: MarkerSpec | None = None
    reward: FieldSpec | None = None
    features: dict[str, tuple[FieldSpec, ...]]
    path: Path | None = Field(None, exclude=True)
    fingerprint: str = Field("", exclude=True)  # sha256 of the mapping and profile texts: re-ingest when either changes
    profile: RobotProfile | None = Field(None, exclude=True)

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; known: {', '.join(FORMATS)}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _format_glob(cls, raw: Any) -> Any:
        """Without `file_glob`, the format's own (`*.bag`, `metadata.yaml` of a bag folder, ...)."""
        if isinstance(raw, dict) and "file_glob" not in raw and raw.get("format") in DEFAULT_GLOBS:
            return raw | {"file_glob": DEFAULT_GLOBS[raw["format"]]}
        return raw

    @model_validator(mode="after")
    def _reader_markers(self) -> "SourceMapping":
        if self.format in READER_MARKED and self.episode_markers is None:
            raise ValueError(
                f"format {self.format} holds many episodes per file and no marker messages: give episode_markers "
                "whose topic names the per-step terminal flag (e.g. /dones); the reader writes start, end and "
                "terminal there (datasets/sources/README.md)")
        return self

    @field_validator("streams")
    @classmethod
    def _stream_topics(cls, v: dict[str, StreamSpec]) -> dict[str, StreamSpec]:
        for topic in v:
            _check_topic(topic)
        return v

    @field_validator("reward")
    @classmethod
    def _scalar_reward(cls, v: FieldSpec | None) -> FieldSpec | None:
        if v is not None and (v.width != 1 or v.is_list or v.transform is not None):
            raise ValueError("must name one scalar field {topic, field} (no size, components, names or transform)")
        return v

    @field_validator("features")
    @classmethod
    def _feature_names(cls, v: dict[str, tuple[FieldSpec, ...]]) -> dict[str, tuple[FieldSpec, ...]]:
        for required in (ACTION, STATE):
            if required not in v:
                raise ValueError(f"feature '{required}' is required (features: {', '.join(v) or 'none'})")
        for name, pieces in v.items():
            if name != ACTION and not name.startswith("observation."):
                raise ValueError(f"feature {name!r}: names are '{ACTION}' or 'observation.<name>'")
            if not pieces:
                raise ValueError(f"feature {name!r}: give a non-empty list of field specs like {{topic: /odom, field: pose.pose.position.z}}")
            images = [p.image is not None for p in pieces]
            if name.startswith(IMAGE_PREFIX) and (len(pieces) != 1 or not images[0]):
                raise ValueError(f"feature {name!r}: a camera feature is one field spec with image: raw or compressed, "
                                 "like [{topic: /camera/compressed, field: data, image: compressed}]")
            if any(images) and not name.startswith(IMAGE_PREFIX):
                raise ValueError(f"feature {name!r}: image fields go in features named '{IMAGE_PREFIX}<camera>'")
        return v

    @property
    def action_bounds(self) -> tuple[float, float]:
        """The robot profile's action bounds (low, high)."""
        return self._profile().action_bounds

    def _profile(self) -> RobotProfile:
        if self.profile is None:
            raise MappingError(f"{self.file_hint}: the robot profile was not loaded; load the mapping with load_mapping")
        return self.profile

    @property
    def file_hint(self) -> str:
        """Where a user fixes this mapping, for error messages."""
        return f"datasets/sources/{self.path.name if self.path else self.name + '.yaml'}"

    @property
    def extra_features(self) -> list[str]:
        """Features beyond the canonical `action` and `observation.state`, in mapping order."""
        return [n for n in self.features if n not in (ACTION, STATE)]

    @property
    def image_features(self) -> dict[str, FieldSpec]:
        """Camera features (`observation.images.<camera>`) and their one field spec each, in mapping order."""
        return {n: pieces[0] for n, pieces in self.features.items() if pieces[0].image is not None}

    def without_images(self) -> "SourceMapping":
        """This mapping with its camera features left out (for logs recorded without the cameras)."""
        return self.without_topics(p.topic for p in self.image_features.values())

    def without_topics(self, topics: Iterable[str]) -> "SourceMapping":
        """This mapping with the features that read any of `topics` left out, and their stream settings."""
        gone = set(topics)
        return self.model_copy(update={
            "features": {n: ps for n, ps in self.features.items() if not any(p.topic in gone for p in ps)},
            "streams": {t: s for t, s in self.streams.items() if t not in gone},
        })

    @property
    def optional_topics(self) -> list[str]:
        """Topics declared `optional: true` under streams: a file may lack them (see `without_topics`)."""
        return [t for t, s in self.streams.items() if s.optional]

    @property
    def image_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Declared frame shapes [height, width, channels] of the camera features that declare one."""
        return {n: p.shape for n, p in self.image_features.items() if p.shape is not None}

    @property
    def aligned_topics(self) -> list[str]:
        """Topics joined onto the control steps (features and reward), control topic first when it maps any."""
        topics = [p.topic for pieces in self.features.values() for p in pieces]
        if self.reward is not None:
            topics.append(self.reward.topic)
        return list(dict.fromkeys(topics))

    @property
    def required_topics(self) -> list[str]:
        """Topics a file must contain (the episode-marker topic and optional streams may be absent)."""
        optional = set(self.optional_topics)
        return [t for t in dict.fromkeys([self.control.topic, *self.aligned_topics, self.instruction.topic])
                if t not in optional]

    @property
    def topics(self) -> list[str]:
        """Every topic ingestion reads."""
        extra = [self.episode_markers.topic] if self.episode_markers else []
        return list(dict.fromkeys([self.control.topic, *self.aligned_topics, self.instruction.topic, *extra]))

    def clock_for(self, topic: str) -> tuple[str, bool]:
        """(clock, strict) of a topic: a stream override is strict (a message without a header is a
        mismatch); the mapping-wide `header` clock falls back to log time for header-less types."""
        stream = self.streams.get(topic)
        if stream is not None and stream.clock is not None:
            return stream.clock, stream.clock == "header"
        return self.clock, False

    def tolerance_for(self, topic: str) -> float:
        """Seconds a topic's latest message stays valid at a control step."""
        stream = self.streams.get(topic)
        if stream is not None and stream.tolerance_s is not None:
            return stream.tolerance_s
        return self.control.tolerance_s

    def feature_width(self, name: str) -> int:
        return sum(p.width for p in self.features[name])

    def feature_names(self, name: str) -> list[str]:
        """Names of each dimension of a feature, in order (a camera's are height, width, channel)."""
        if name in self.image_features:
            return ["height", "width", "channel"]
        return [n for p in self.features[name] for n in p.dim_names()]


def load_mapping(path_or_name: str | Path) -> SourceMapping:
    """Load and validate a source mapping and its robot profile.

    A bare name (`my_fleet`) resolves to `<config dir>/sources/<name>.yaml` (foundations.catalog);
    anything with a suffix or a slash is a path. Raises `MappingError` naming the file, the key
    and the fix.
    """
    path = config_path("sources", path_or_name, MappingError)
    text = path.read_bytes()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from exc
    mapping = parse_mapping(raw, where=path)
    if mapping.name != path.stem:
        raise MappingError(f"{path}: key 'name': is {mapping.name!r} but the file is {path.name}; make them match "
                           "(the name is the source: its landing folder and its rows' source column)")
    try:
        profile = load_profile(mapping.robot)
    except ProfileError as exc:
        raise MappingError(f"{path}: key 'robot': robot profile {mapping.robot!r} does not load: {exc}") from None
    _check_profile(mapping, profile, path)
    digest = hashlib.sha256(text + b"\0" + profile.path.read_bytes()).hexdigest()
    return mapping.model_copy(update={"path": path, "profile": profile, "fingerprint": digest})


def parse_mapping(raw: Any, where: str | Path = "mapping") -> SourceMapping:
    """Validate an already-parsed YAML document into a `SourceMapping` (profile not loaded)."""
    if not isinstance(raw, dict):
        raise MappingError(f"{where}: key '(top level)': must be a mapping of keys, got {type(raw).__name__}")
    for key, becomes in _MOVED.items():
        if key in raw:
            robot = raw.get("robot") if isinstance(raw.get("robot"), str) else "<robot>"
            raise MappingError(
                f"{where}: key '{key}': no longer part of a source mapping; move it to the robot profile "
                f"datasets/robots/{robot}.yaml as {becomes} (see datasets/robots/README.md)")
    if raw.get("robot") is None:
        raise MappingError(
            f"{where}: key 'robot': required: name the robot profile of this fleet, a file in datasets/robots/ "
            f"(known: {', '.join(list_configs('robots')) or 'none'}; format: datasets/robots/README.md)")
    try:
        mapping = SourceMapping.model_validate(raw)
    except ValidationError as exc:
        raise MappingError(config_error(where, exc)) from None
    _check_streams(mapping, where)
    return mapping


def _check_streams(mapping: SourceMapping, where: str | Path) -> None:
    aligned = mapping.aligned_topics
    for topic in mapping.streams:
        if topic == mapping.control.topic:
            if mapping.streams[topic].tolerance_s is not None:
                raise MappingError(
                    f"{where}: key 'streams.{topic}.tolerance_s': the control topic defines the steps; "
                    "its tolerance is control.tolerance_s (set only clock here)")
        elif topic not in mapping.topics:
            raise MappingError(
                f"{where}: key 'streams.{topic}': not a topic this mapping reads (topics: {', '.join(mapping.topics)})")
        elif topic not in aligned and mapping.streams[topic].tolerance_s is not None:
            raise MappingError(
                f"{where}: key 'streams.{topic}.tolerance_s': {topic} is not aligned to the steps (only feature and "
                f"reward topics are: {', '.join(aligned)}); drop tolerance_s")
    cameras = {p.topic for p in mapping.image_features.values()}
    others = {p.topic for n, ps in mapping.features.items() if n not in mapping.image_features for p in ps}
    others |= {mapping.control.topic, mapping.instruction.topic, *([mapping.reward.topic] if mapping.reward else []),
               *([mapping.episode_markers.topic] if mapping.episode_markers else [])}
    for topic in mapping.optional_topics:
        if topic not in cameras or topic in others:
            raise MappingError(
                f"{where}: key 'streams.{topic}.optional': only a topic that feeds camera features alone may be "
                f"optional (camera topics: {', '.join(sorted(cameras)) or 'none'}); the control, instruction, reward "
                "and vector feature topics are required, so drop optional: true")


def _profile_slices(profile: RobotProfile) -> dict[str, Slice]:
    slices = {k: getattr(profile, k) for k in ("base_pose", "end_effector", "target", "joint_velocity")}
    if profile.posture is not None:
        slices |= {"posture.height": profile.posture.height, "posture.orientation_wxyz": profile.posture.orientation_wxyz}
    return {k: s for k, s in slices.items() if s is not None}


def _check_profile(mapping: SourceMapping, profile: RobotProfile, where: Path) -> None:
    """Every feature the profile reads is produced here, and every slice fits its feature's width."""
    where_profile = profile.path or f"datasets/robots/{mapping.robot}.yaml"
    for key, s in _profile_slices(profile).items():
        if s.feature not in mapping.features:
            raise MappingError(
                f"{where}: key 'features': robot profile {where_profile} reads {s.feature} ({key}) but this mapping "
                f"does not produce it (features: {', '.join(mapping.features)}); add it here or fix the profile")
        width = mapping.feature_width(s.feature)
        end = s.start + (s.count or 1)
        if end > width:
            raise MappingError(
                f"{where}: key 'features.{s.feature}': robot profile {where_profile} reads dimensions "
                f"{s.start}..{end - 1} of it ({key}) but this mapping makes it {width} wide; fix one of them")
