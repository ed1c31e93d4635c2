"""Flat per-step and per-episode check columns derived from the episode table with polars.

Great Expectations cannot look inside list columns and has no polars backend, so every
property the validation suite tests is first computed here as one plain column
(`observation_state_finite`, `dt`, `n_steps`, ...). All window work (time deltas, step
deltas, positions) runs per episode in step order, whatever order the rows arrive in;
the step frame keeps the input's row order and a `row` column so failing rows map back
to the input.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from foundations.schema import ACTION, LINEAGE, POLARS_SCHEMA, POSE

ROW = "row"  # position of the row in the input table
EPISODE = "episode"  # dense integer code of episode_id (null where the id is null)
REQUIRED_NOT_NULL = ("step", "timestamp", "is_first", "is_last", "is_terminal")
_EPISODE_WINDOW = {"partition_by": "episode_id", "order_by": "step"}


@dataclass(frozen=True)
class Feature:
    """One feature column the suite checks: a list of floats (state, action, pose) or an image."""

    column: str
    kind: str  # "list" or "image"

    @property
    def slug(self) -> str:
        """The feature's name as a plain identifier, for derived column names."""
        return re.sub(r"[^0-9a-zA-Z]+", "_", self.column).strip("_")

    @property
    def dim_column(self) -> str:
        return f"{self.slug}_dim"

    @property
    def finite_column(self) -> str:
        return f"{self.slug}_finite"

    @property
    def present_column(self) -> str:
        """Null exactly where the feature is missing at a step."""
        return self.dim_column if self.kind == "list" else f"{self.slug}_bytes"

    def frame_column(self, fact: str) -> str:
        """A camera feature's per-step frame fact: decodes, shape, brightness, still_s (see `frame_facts`)."""
        return f"{self.slug}_{fact}"


def expected_schema(df: pl.DataFrame) -> dict[str, pl.DataType]:
    """Column types the table must have: the canonical schema, plus the pose when present."""
    expected = dict(POLARS_SCHEMA)
    if POSE in df.columns:
        expected[POSE] = pl.List(pl.Float32)
    return expected


def schema_frame(df: pl.DataFrame) -> pl.DataFrame:
    """One row per expected column with its expected and observed type (null when missing)."""
    expected = expected_schema(df)
    return pl.DataFrame(
        {
            "position": list(range(len(expected))),
            "column": list(expected),
            "expected": [str(t) for t in expected.values()],
            "observed": [str(df.schema[c]) if c in df.columns else None for c in expected],
        },
        schema={"position": pl.Int64, "column": pl.String, "expected": pl.String, "observed": pl.String},
    )


def features(df: pl.DataFrame) -> list[Feature]:
    """Feature columns to check: the action and every `observation.*` float list or image column."""
    found = []
    for name, dtype in df.schema.items():
        if name != ACTION and not name.startswith("observation."):
            continue
        if isinstance(dtype, pl.List) and dtype.inner.is_float():
            found.append(Feature(name, "list"))
        elif dtype == pl.Binary:
            found.append(Feature(name, "image"))
    return found


def _feature_columns(feature: Feature) -> list[pl.Expr]:
    col = pl.col(feature.column)
    if feature.kind == "image":
        # An episode with no frame at all had no camera (its file lacked an optional camera stream): size 0
        # counts as present, so only frames missing beside others fail the not-null check.
        no_camera = col.is_null().all().over("episode_id")
        return [pl.when(no_camera).then(0).otherwise(col.bin.size()).alias(feature.present_column)]
    # A null list or a null element both mean the topic had no value at this step.
    has_null = col.list.eval(pl.element().is_null()).list.any()
    dim = pl.when(col.is_null() | has_null).then(None).otherwise(col.list.len())
    # Missing values are the not-null check's business, so they count as finite here.
    finite = col.list.eval(pl.element().is_finite() | pl.element().is_null()).list.all().fill_null(True)
    return [dim.cast(pl.Int32).alias(feature.dim_column), finite.alias(feature.finite_column)]


def frame_facts(frames: pl.Series) -> pl.DataFrame:
    """Per distinct encoded frame: whether it decodes, its shape `HxWxC` and mean brightness (0-255).

    Frames repeat across steps (a camera slower than the control rate, as-of aligned), so each
    distinct frame is decoded once; decoding is Pillow's C work per frame.
    """
    from PIL import Image

    unique = frames.drop_nulls().unique()
    decodes, shapes, brightness = [], [], []
    for data in unique.to_list():
        try:
            with Image.open(io.BytesIO(data)) as img:
                pixels = np.asarray(img)
            channels = 1 if pixels.ndim == 2 else pixels.shape[2]
            decodes.append(True)
            shapes.append(f"{pixels.shape[0]}x{pixels.shape[1]}x{channels}")
            scale = 255.0 / 65535.0 if pixels.dtype == np.uint16 else 1.0
            brightness.append(float(pixels[..., :3].mean()) * scale if channels >= 3 else float(pixels.mean()) * scale)
        except Exception:  # Pillow raises several types for bad bytes (UnidentifiedImageError, OSError, ...)
            decodes.append(False)
            shapes.append(None)
            brightness.append(None)
    return pl.DataFrame({"__frame": unique, "decodes": decodes, "shape": shapes, "brightness": brightness},
                        schema={"__frame": pl.Binary, "decodes": pl.Boolean, "shape": pl.String, "brightness": pl.Float64})


def _image_facts(df: pl.DataFrame, feature: Feature) -> pl.DataFrame:
    """Per row of `df` (same order): the frame facts of `feature` and how long its frame has not changed.

    `still_s` is the time since the episode's frame last changed (identical bytes): a camera stuck
    on one frame keeps growing it, a live one (sensor noise changes every frame) resets it at
    each new frame. Null frames count as changes, so a gap is the not-null check's business.
    """
    col = pl.col(feature.column)
    same = (col.hash() == col.hash().shift(1)).over(**_EPISODE_WINDOW).fill_null(False) & col.is_not_null()
    run = (~same).cum_sum().over(**_EPISODE_WINDOW)
    facts = frame_facts(df.get_column(feature.column))
    return (
        df.lazy().select("episode_id", "step", "timestamp", feature.column)
        .with_columns(run.alias("__run"))
        .with_columns((pl.col("timestamp") - pl.col("timestamp").min().over("episode_id", "__run")).alias("still_s"))
        .join(facts.lazy(), left_on=feature.column, right_on="__frame", how="left", maintain_order="left")
        .select(
            pl.col("decodes").fill_null(True).alias(feature.frame_column("decodes")),  # a missing frame: not_null's
            pl.col("shape").alias(feature.frame_column("shape")),
            pl.col("brightness").alias(feature.frame_column("brightness")),
            pl.when(col.is_not_null()).then(pl.col("still_s")).alias(feature.frame_column("still_s")),
        )
        .collect()
    )


def step_frame(df: pl.DataFrame, feats: list[Feature]) -> pl.DataFrame:
    """Per-step check columns, in input row order (see module docstring)."""
    ts = pl.col("timestamp")
    step = pl.col("step")
    dt = (ts - ts.shift(1)).over(**_EPISODE_WINDOW)
    pos = pl.int_range(pl.len()).over(**_EPISODE_WINDOW)
    n = pl.len().over("episode_id")
    markers_ok = (
        (pl.col("is_first") == (pos == 0))
        & (pl.col("is_last") == (pos == n - 1))
        & (~pl.col("is_terminal") | pl.col("is_last"))
    )
    exprs: list[pl.Expr] = [
        (pl.col("episode_id").rank("dense") - 1).cast(pl.Int64).alias(EPISODE),
        *[pl.col(c) for c in REQUIRED_NOT_NULL],
        (pl.col("language_instruction").rank("dense")).cast(pl.Int64).alias("instruction"),
        (ts.is_finite() | ts.is_null()).alias("timestamp_finite"),
        # NaN/inf timestamps are reported by the finite check; their deltas stay out of the rate checks.
        pl.when(dt.is_finite()).then(dt).alias("dt"),
        pl.when(dt.is_finite() & (dt > 0)).then(dt).alias("dt_forward"),
        (step - step.shift(1, fill_value=-1)).over(**_EPISODE_WINDOW).cast(pl.Int64).alias("step_delta"),
        markers_ok.fill_null(True).alias("markers_ok"),
    ]
    for feature in feats:
        exprs.extend(_feature_columns(feature))
    if ACTION in df.columns and isinstance(df.schema[ACTION], pl.List):
        finite_only = pl.element().filter(pl.element().is_finite())
        exprs.append(pl.col(ACTION).list.eval(finite_only).list.min().cast(pl.Float64).alias("action_min"))
        exprs.append(pl.col(ACTION).list.eval(finite_only).list.max().cast(pl.Float64).alias("action_max"))
    steps = df.lazy().with_row_index(ROW).select(pl.col(ROW).cast(pl.Int64), *exprs).collect()
    images = [_image_facts(df, f) for f in feats if f.kind == "image"]
    return pl.concat([steps, *images], how="horizontal") if images else steps


def episode_frame(df: pl.DataFrame) -> pl.DataFrame:
    """Per-episode check columns, one row per non-null episode_id, sorted so `episode` == row position."""
    return (
        df.lazy()
        .filter(pl.col("episode_id").is_not_null())
        .group_by("episode_id")
        .agg(
            n_steps=pl.len().cast(pl.Int64),
            # Length of an episode that did not end in a failure state; a fall (RLDS is_terminal)
            # is a real outcome and may be short, so only truncated episodes need min_steps.
            n_steps_truncated=pl.when(pl.col("is_terminal").any()).then(None).otherwise(pl.len()).cast(pl.Int64),
            n_instructions=pl.col("language_instruction").drop_nulls().n_unique().cast(pl.Int64),
            *[pl.col(c).first() for c in LINEAGE],
        )
        .sort("episode_id")
        .with_columns((pl.col("episode_id").rank("dense") - 1).cast(pl.Int64).alias(EPISODE))
        .collect()
    )


def modal_shapes(steps: pl.DataFrame, feats: list[Feature]) -> dict[str, str]:
    """The most common decoded frame shape (`HxWxC`) of each camera feature across the table."""
    shapes: dict[str, str] = {}
    for feature in feats:
        if feature.kind != "image":
            continue
        counts = steps.get_column(feature.frame_column("shape")).drop_nulls().value_counts(sort=True)
        if counts.height:
            shapes[feature.column] = str(counts.item(0, 0))
    return shapes


def modal_dims(steps: pl.DataFrame, feats: list[Feature]) -> dict[str, int]:
    """The most common length of each list feature across the table (features with no values are left out)."""
    dims: dict[str, int] = {}
    for feature in feats:
        if feature.kind != "list":
            continue
        counts = steps.get_column(feature.dim_column).drop_nulls().value_counts(sort=True)
        if counts.height:
            dims[feature.column] = int(counts.item(0, 0))
    return dims
