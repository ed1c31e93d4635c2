"""Topic frames in the `McapLog` layout from columns of values, shared by the non-MCAP readers.

Every reader hands alignment the same frame per topic: `log_time` (int64 ns) then one column
per mapped field path, typed by the field's kind (foundations.ingest.mcap_source.Column), so
foundations.ingest.align works unchanged whatever the format.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from foundations.ingest.mcap_source import LOG_TIME, Column, FieldMismatch

_DTYPES = {"float": pl.Float64, "int": pl.Int64, "text": pl.String, "strings": pl.List(pl.String)}
_WANT = {"float": "a number", "int": "an integer", "list": "an array of numbers", "text": "a string",
         "strings": "an array of strings", "bytes": "bytes (uint8[], e.g. an image's data)"}


def is_kind(value: Any, kind: str) -> bool:
    """Whether a decoded value (Python or numpy) is of a column's kind."""
    if kind in ("float", "int"):
        if isinstance(value, (bool, np.bool_)):
            return False
        ints = (int, np.integer)
        return isinstance(value, ints) if kind == "int" else isinstance(value, (*ints, float, np.floating))
    if kind == "list":
        if isinstance(value, np.ndarray):
            return value.ndim == 1 and (np.issubdtype(value.dtype, np.number) and not np.issubdtype(value.dtype, np.bool_))
        return isinstance(value, (list, tuple)) and all(is_kind(x, "float") for x in value)
    if kind == "text":
        return isinstance(value, str)
    if kind == "bytes":
        return isinstance(value, (bytes, bytearray, memoryview)) or getattr(value, "dtype", None) == np.uint8
    return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)


def check_kind(topic: str, column: Column, value: Any, where: str) -> None:
    """FieldMismatch naming the field, the topic and what was found, when `value` is not of the column's kind."""
    if not is_kind(value, column.kind):
        found = f"an array of {value.dtype} with shape {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise FieldMismatch(topic, f"field {column.path} of {topic} ({where}) is {found}, expected {_WANT[column.kind]}")


def list_series(name: str, rows: Any) -> pl.Series:
    """list<float64> from per-message arrays (or a 2-D block): one numpy block when all have one length."""
    try:
        block = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError):  # ragged: some message has another length (reported by size checks)
        block = None
    if block is not None and block.ndim == 2 and block.shape[1] > 0:
        return pl.Series(name, block).cast(pl.List(pl.Float64))
    return pl.Series(name, [None if r is None else np.asarray(r, dtype=np.float64) for r in rows],
                     dtype=pl.List(pl.Float64), strict=False)


def topic_frame(times: Sequence[int] | np.ndarray, columns: Sequence[Column], values: Sequence[Any]) -> pl.DataFrame:
    """The frame of one topic: `log_time` then each column's values (a sequence per column), sorted by time."""
    data = {LOG_TIME: pl.Series(LOG_TIME, np.asarray(times, dtype=np.int64), dtype=pl.Int64)}
    for col, vals in zip(columns, values):
        if col.kind == "list":
            data[col.path] = list_series(col.path, vals)
        elif col.kind == "bytes":  # an image's data: rosbags gives numpy uint8 arrays
            data[col.path] = pl.Series(col.path, [None if v is None else bytes(v) for v in vals], dtype=pl.Binary)
        else:
            if isinstance(vals, np.ndarray) and vals.dtype.kind in "OSU":
                vals = vals.tolist()
            data[col.path] = pl.Series(col.path, vals, dtype=_DTYPES[col.kind], strict=False)
    return pl.DataFrame(data).sort(LOG_TIME, maintain_order=True)
