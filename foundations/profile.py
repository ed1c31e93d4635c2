"""Robot profiles: what the quality scores, the referee and training need to know about an embodiment.

A profile is `datasets/robots/<name>.yaml`, named by a source mapping's `robot:` key. It says
where the quantities the scores and the referee read sit in the canonical features (the base
pose, the end effector, a target, joint velocities, posture), the action bounds, and what
progress means for each skill. Nothing downstream of ingestion assumes a layout: it reads
these declarations. The format is documented in `datasets/robots/README.md`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from foundations.catalog import load_model

# Progress measures and the declarations each one needs (see foundations.progress).
MEASURES: dict[str, tuple[str, ...]] = {
    "forward_m": ("base_pose",),  # metres along the heading at the episode's first step
    "yaw_rad": ("base_pose",),  # yaw turned since the first step, unwrapped, left positive
    "reach_fraction": ("end_effector", "target"),  # share of the first step's distance to the target closed
    "bearing_rad": ("end_effector",),  # end effector's bearing around the base turned, left positive
}


class ProfileError(ValueError):
    """A robot profile is missing or malformed; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Slice(_Strict):
    """Dimensions `start .. start+count-1` of a canonical list feature (count null: to the end)."""

    feature: str
    start: int = Field(0, ge=0)
    count: int | None = Field(None, ge=1)

    @field_validator("feature")
    @classmethod
    def _feature_name(cls, v: str) -> str:
        if not v.startswith("observation."):
            raise ValueError(f"must name an observation feature like observation.state, got {v!r}")
        return v


class Posture(_Strict):
    """When a legged robot counts as fallen: base height below `min_height` (metres) or torso tilted
    so far that the cosine of the tilt is below `min_upright_cos`."""

    height: Slice  # one dimension: the base height in metres
    orientation_wxyz: Slice  # four dimensions: the base orientation quaternion w, x, y, z
    min_height: float
    min_upright_cos: float = 0.25


class Skill(_Strict):
    """What progress toward one instruction means: a measure and the value that counts as done."""

    measure: Literal["forward_m", "yaw_rad", "reach_fraction", "bearing_rad"]
    target: float

    @field_validator("target")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0 or v != v or abs(v) == float("inf"):
            raise ValueError("must be a non-zero finite number (progress is measured as a share of it)")
        return v


class RobotProfile(_Strict):
    """A validated robot profile (see the module docstring)."""

    name: str
    description: str = ""
    action_bounds: tuple[float, float]
    base_pose: Slice | None = None  # three dimensions: planar x (m), y (m), yaw (rad) of a mobile base
    end_effector: Slice | None = None  # two or three dimensions: end-effector position (m)
    target: Slice | None = None  # the goal position, in the end effector's frame and dimensions
    joint_velocity: Slice | None = None  # joint velocities (rad/s), for the smoothness score
    posture: Posture | None = None
    # Length of a complete episode (s): completeness is measured against it, so an episode's
    # score never depends on what else landed with it. Null: the longest episode per instruction.
    nominal_episode_s: float | None = Field(None, gt=0)
    skills: dict[str, Skill]
    path: Path | None = Field(None, exclude=True)

    @field_validator("action_bounds")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError(f"low {v[0]} must be below high {v[1]}")
        return v

    @model_validator(mode="after")
    def _slice_sizes(self) -> "RobotProfile":
        # The number of dimensions each declaration must have (count null: unknown until data is seen).
        sizes = {"base_pose": (3,), "end_effector": (2, 3), "target": (2, 3)}
        for key, allowed in sizes.items():
            s = getattr(self, key)
            if s is not None and s.count is not None and s.count not in allowed:
                raise ValueError(f"{key}: count must be {' or '.join(map(str, allowed))}, got {s.count}")
        ee, target = self.end_effector, self.target
        if ee is not None and target is not None and ee.count != target.count:
            raise ValueError(f"end_effector and target need the same count of dimensions, got {ee.count} and {target.count}")
        if self.posture is not None:
            if self.posture.height.count not in (None, 1) or self.posture.orientation_wxyz.count not in (None, 4):
                raise ValueError("posture: height has count 1 and orientation_wxyz count 4")
        return self

    @model_validator(mode="after")
    def _measures_have_what_they_need(self) -> "RobotProfile":
        if not self.skills:
            raise ValueError("skills: declare at least one skill (instruction -> {measure, target})")
        for name, skill in self.skills.items():
            missing = [k for k in MEASURES[skill.measure] if getattr(self, k) is None]
            if missing:
                raise ValueError(f"skill {name!r} uses measure {skill.measure}, which needs {', '.join(missing)} declared")
        return self

    @property
    def features(self) -> set[str]:
        """Canonical features the profile reads (each must be produced by the source mapping)."""
        slices = [self.base_pose, self.end_effector, self.target, self.joint_velocity]
        if self.posture is not None:
            slices += [self.posture.height, self.posture.orientation_wxyz]
        return {s.feature for s in slices if s is not None}


def load_profile(name_or_path: str | Path) -> RobotProfile:
    """The robot profile `datasets/robots/<name>.yaml` (or a path to one); raises ProfileError."""
    return load_model("robots", name_or_path, RobotProfile, ProfileError)
