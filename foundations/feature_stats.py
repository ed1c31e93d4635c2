"""Feature declarations and normalisation statistics of a published dataset.

`hf_features` and `to_hub_arrow` give the Hugging Face view of the table (camera
frames as `datasets.Image`); `feature_specs` and `feature_stats` fill meta/info.json
the LeRobot way: dtype, shape and element names per feature, and per-element
mean, std, min, max, q01, q99 computed over all published rows at once.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from foundations.schema import IMAGE_PREFIX

if TYPE_CHECKING:
    import datasets

QUANTILES = (0.01, 0.99)


def image_columns(schema: pa.Schema) -> list[str]:
    """Camera columns: `observation.images.*` holding encoded frames (binary) or paths (string)."""
    return [f.name for f in schema if f.name.startswith(IMAGE_PREFIX)
            and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
                 or pa.types.is_binary_view(f.type) or pa.types.is_string(f.type)
                 or pa.types.is_large_string(f.type))]


def _regular(t: pa.DataType) -> pa.DataType:
    """The 32-bit-offset type the Hub's viewers and `datasets` declare by default."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(_regular(t.value_type))
    if pa.types.is_list(t):
        return pa.list_(_regular(t.value_type))
    if pa.types.is_dictionary(t):
        return _regular(t.value_type)
    return t


def hf_features(schema: pa.Schema) -> "datasets.Features":
    """`datasets.Features` for a table schema, with camera columns declared as `datasets.Image()`."""
    import datasets  # imported when publishing, so that loading the pipeline definitions stays fast

    images = set(image_columns(schema))
    plain = pa.schema([pa.field(f.name, _regular(f.type)) for f in schema if f.name not in images])
    base = datasets.Features.from_arrow_schema(plain)
    return datasets.Features({f.name: datasets.Image() if f.name in images else base[f.name] for f in schema})


def to_hub_arrow(table: pa.Table, features: "datasets.Features") -> pa.Table:
    """Cast a table to the storage its features declare (images become {bytes, path} structs).

    The result carries the features in its schema metadata, so Parquet written from
    it loads with the same features even without the dataset card.
    """
    import datasets

    arrays = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        feature = features[name]
        if isinstance(feature, datasets.Image):
            col = feature.cast_storage(col.cast(pa.binary() if canonical_binary(col.type) else pa.string()))
        else:
            col = col.cast(_regular(col.type))
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=features.arrow_schema)


def canonical_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def feature_specs(df: pl.DataFrame, names: dict[str, list[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Per column: dtype ("float32", "string", "image", ...), shape, and element names where known."""
    names = names or {}
    images = {c for c, t in df.schema.items() if c.startswith(IMAGE_PREFIX) and t in (pl.Binary, pl.String)}
    specs: dict[str, dict[str, Any]] = {}
    for col, dtype in df.schema.items():
        if col in images:
            specs[col] = {"dtype": "image", "shape": _image_shape(df.get_column(col)), "names": ["height", "width", "channel"]}
            continue
        shape: list[int] | None = [1]
        inner = dtype
        if isinstance(dtype, (pl.List, pl.Array)):
            inner = dtype.inner
            lengths = df.get_column(col).list.len().drop_nulls().unique()
            shape = [int(lengths[0])] if lengths.len() == 1 else None  # None: length varies by row
        elem = names.get(col)
        specs[col] = {
            "dtype": _dtype_name(inner),
            "shape": shape,
            "names": elem if elem is not None and shape is not None and len(elem) == shape[0] else None,
        }
    return specs


def _dtype_name(dtype: pl.DataType) -> str:
    if dtype == pl.String:
        return "string"
    if dtype == pl.Boolean:
        return "bool"
    if dtype == pl.Binary:
        return "binary"
    return str(dtype).lower()


def _image_shape(col: pl.Series) -> list[int] | None:
    """[height, width, channels] of the first decodable frame; None when no frame decodes."""
    from PIL import Image, UnidentifiedImageError  # pillow ships with matplotlib and datasets[vision]

    first = col.drop_nulls().head(1)
    if first.len() == 0 or col.dtype != pl.Binary:
        return None
    try:
        with Image.open(io.BytesIO(first[0])) as img:
            return [img.height, img.width, len(img.getbands())]
    except (UnidentifiedImageError, OSError):
        return None


def feature_stats(df: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Normalisation statistics per numeric feature: mean, std, min, max, q01, q99 and count.

    Vector features give one value per element (stats over rows, vectorised with
    numpy on the flattened list values); scalar features give a one-element list,
    as LeRobot does. Nulls are left out; a feature with no values gets nulls.
    Lists whose length varies by row are summarised over all their values.
    """
    stats: dict[str, dict[str, Any]] = {}
    for col, dtype in df.schema.items():
        series = df.get_column(col)
        if isinstance(dtype, (pl.List, pl.Array)) and dtype.inner.is_numeric():
            arr = series.to_arrow()
            if isinstance(arr, pa.ChunkedArray):
                arr = arr.combine_chunks()
            lengths = pc.list_value_length(arr).drop_null().to_numpy(zero_copy_only=False)
            values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
            width = int(lengths[0]) if lengths.size and (lengths == lengths[0]).all() and lengths[0] > 0 else None
            matrix = values.reshape(-1, width) if width else values.reshape(-1, 1)
        elif dtype.is_numeric() and dtype != pl.Boolean:
            matrix = series.drop_nulls().cast(pl.Float64).to_numpy().reshape(-1, 1)
        else:
            continue
        stats[col] = _matrix_stats(matrix)
    return stats


def _matrix_stats(m: np.ndarray) -> dict[str, Any]:
    count = int(np.isfinite(m).all(axis=1).sum()) if m.size else 0
    if m.shape[0] == 0 or not np.isfinite(m).any():
        blank = [None] * max(m.shape[1], 1)
        return {"mean": blank, "std": blank, "min": blank, "max": blank, "q01": blank, "q99": blank, "count": 0}
    with warnings.catch_warnings():  # all-NaN elements are reported as null, not warned about
        warnings.simplefilter("ignore", RuntimeWarning)
        finite = np.where(np.isfinite(m), m, np.nan)
        q = np.nanquantile(finite, QUANTILES, axis=0)
        out = {
            "mean": np.nanmean(finite, axis=0), "std": np.nanstd(finite, axis=0),
            "min": np.nanmin(finite, axis=0), "max": np.nanmax(finite, axis=0),
            "q01": q[0], "q99": q[1],
        }
    return {**{k: _floats(v) for k, v in out.items()}, "count": count}


def _floats(v: np.ndarray) -> list[float | None]:
    return [float(x) if math.isfinite(x) else None for x in np.atleast_1d(v).tolist()]
