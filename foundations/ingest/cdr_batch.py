"""Decode the mapped fields of many ROS 2 CDR messages at once, without a Python object per message.

A topic's messages nearly always share one byte layout: the same string and array lengths put
every field at the same offset. So one message (the template) is walked field by field, as
mcap-ros2-support's decoder reads it (CDR, alignment relative to the 4-byte encapsulation
header), which gives the offset of each mapped field and the position of every length prefix.
Every message of the same size whose length prefixes equal the template's has that layout, and
each field is read for all of them with one numpy view. Messages that fit no layout (a longer
frame_id, an array of another length) take another template; past a few layouts, and for what
this module does not read (big-endian data, wstring, a kind it does not know), the caller falls
back to the per-message decoder: this module never guesses a value.

The message definitions are parsed by mcap-ros2-support itself (the same parser and the same
defaults as its decoder), so both read a schema the same way.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
from mcap_ros2._dynamic import TimeDefinition, _for_each_msgdef

MAX_LAYOUTS = 8  # templates tried per batch before the rest is left to the per-message decoder
_MAX_NODES = 4096  # fields walked in one template (a long array of messages is left to the per-message decoder)
_STEP = re.compile(r"([A-Za-z_]\w*)|\[(\d+)\]")

# ROS 2 primitive -> little-endian numpy dtype (what mcap-ros2-support reads for it).
_PRIMITIVES = {
    "bool": "u1", "byte": "u1", "char": "i1", "int8": "i1", "uint8": "u1", "int16": "<i2", "uint16": "<u2",
    "int32": "<i4", "uint32": "<u4", "int64": "<i8", "uint64": "<u8", "float32": "<f4", "float64": "<f8",
}
_INTEGERS = {"byte", "char", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64"}  # not uint64: may exceed Int64
_BYTES = {"byte", "uint8"}  # arrays of these decode to `bytes`, not to a list of numbers


class Unfit(Exception):
    """The message, or the field asked for, is not one this module reads: use the per-message decoder."""


@lru_cache(maxsize=256)
def message_definitions(schema_name: str, schema_text: str) -> dict[str, Any]:
    """Definitions by name, built exactly as mcap-ros2-support's `generate_dynamic` builds them."""
    msgdefs: dict[str, Any] = {"builtin_interfaces/Time": TimeDefinition, "builtin_interfaces/Duration": TimeDefinition}

    def add(full_name: str, short_name: str, msgdef: Any) -> None:
        msgdefs[full_name] = msgdefs[short_name] = msgdef

    _for_each_msgdef(schema_name, schema_text, add)
    return msgdefs


@dataclass(frozen=True)
class _Leaf:
    what: str  # "scalar", "array" (primitives), "string", "strings", "messages" (an array of messages), "null"
    type: str = ""  # the ROS primitive type of a scalar or array
    offset: int = 0  # byte offset in the message (of a string: of its characters)
    count: int = 0  # array elements; string bytes (with the terminator); messages in an array
    strings: tuple[tuple[int, int], ...] = ()  # (offset, length) of each string of a string array


class _Walk:
    """One message read as mcap-ros2-support reads it, keeping the offsets instead of the values."""

    def __init__(self, msgdefs: dict[str, Any], data: np.ndarray):
        self.msgdefs, self.data, self.size = msgdefs, data, len(data)
        self.pos = 4
        self.prefixes: list[int] = []
        self.leaves: dict[str, _Leaf] = {}
        self.nodes = 0

    def _take(self, size: int) -> int:
        """Align to `size` (as CdrReader does, relative to the header) and step over it; the start offset."""
        if size > 1 and (self.pos - 4) % size:
            self.pos += size - (self.pos - 4) % size
        start = self.pos
        self.pos += size
        if self.pos > self.size:
            raise Unfit("the message ends inside a field")
        return start

    def _length(self) -> int:
        start = self._take(4)
        self.prefixes.append(start)
        return int(self.data[start:start + 4].view("<u4")[0])

    def _string(self) -> tuple[int, int]:
        length = self._length()
        start = self.pos
        self.pos += length
        if self.pos > self.size:
            raise Unfit("a string runs past the end of the message")
        return start, length

    def message(self, msgdef: Any, path: str) -> None:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise Unfit("too many fields to lay out")
        if not msgdef.fields:
            self._take(1)  # an empty message holds one placeholder byte
        for fld in msgdef.fields:
            ftype = fld.type
            key = f"{path}.{fld.name}" if path else fld.name
            fixed = ftype.array_size if ftype.is_fixed_size_array() and ftype.array_size is not None else None
            if not ftype.is_primitive_type():
                nested = self.msgdefs.get(f"{ftype.pkg_name}/{ftype.type}")
                if nested is None:
                    raise Unfit(f"no definition of {ftype.pkg_name}/{ftype.type}")
                if ftype.is_array:
                    count = fixed if fixed is not None else self._length()
                    self.leaves[key] = _Leaf("messages", count=count)
                    for i in range(count):
                        self.message(nested, f"{key}[{i}]")
                else:
                    self.message(nested, key)
            elif ftype.type == "string":
                if ftype.is_array:
                    count = fixed if fixed is not None else self._length()
                    self.leaves[key] = _Leaf("strings", "string", strings=tuple(self._string() for _ in range(count)))
                else:
                    offset, length = self._string()
                    self.leaves[key] = _Leaf("string", "string", offset, length)
            elif ftype.type in _PRIMITIVES:
                size = np.dtype(_PRIMITIVES[ftype.type]).itemsize
                if ftype.is_array:
                    count = fixed if fixed is not None else self._length()
                    start = self._take(size) if count else self.pos  # only a first element aligns
                    self.pos = start + size * count
                    if self.pos > self.size:
                        raise Unfit("an array runs past the end of the message")
                    self.leaves[key] = _Leaf("array", ftype.type, start, count)
                else:
                    self.leaves[key] = _Leaf("scalar", ftype.type, self._take(size))
            else:
                raise Unfit(f"{ftype.type} fields are not read here")

    def resolve(self, path: str) -> _Leaf:
        """The leaf at a field path; `null` past an array's end (as the per-message getter gives None)."""
        key = ""
        steps = _STEP.findall(path)
        for n, (name, index) in enumerate(steps):
            if name:
                key = f"{key}.{name}" if key else name
                continue
            i, leaf = int(index), self.leaves.get(key)
            if leaf is None:
                raise Unfit(f"{key} is not an array")
            if i >= (len(leaf.strings) if leaf.what == "strings" else leaf.count):
                return _Leaf("null")
            if leaf.what == "messages":
                key = f"{key}[{i}]"
                continue
            if n != len(steps) - 1:
                raise Unfit(f"{path} looks inside a primitive")
            if leaf.what == "array":
                return _Leaf("scalar", leaf.type, leaf.offset + i * np.dtype(_PRIMITIVES[leaf.type]).itemsize)
            if leaf.what == "strings":
                offset, length = leaf.strings[i]
                return _Leaf("string", "string", offset, length)
            raise Unfit(f"{key} cannot be indexed")
        if key not in self.leaves:
            raise Unfit(f"{path} is not a field")
        return self.leaves[key]


def _fits(leaf: _Leaf, kind: str) -> bool:
    """Whether the per-message decoder's value at this leaf is one the column kind accepts (as its check does)."""
    if leaf.what == "null":
        return kind in ("float", "int", "text")
    return {
        "float": leaf.what == "scalar" and leaf.type in _PRIMITIVES and leaf.type != "bool",
        "int": leaf.what == "scalar" and leaf.type in _INTEGERS,
        "list": leaf.what == "array" and leaf.type not in _BYTES,
        "text": leaf.what == "string",
        "strings": leaf.what == "strings",
    }.get(kind, False)


_DTYPES = {"float": pl.Float64, "int": pl.Int64, "list": pl.List(pl.Float64), "text": pl.String,
           "strings": pl.List(pl.String)}
KINDS = frozenset(_DTYPES)  # the column kinds read here; a topic with another kind is decoded message by message


def _text(raw: bytes, length: int) -> str:
    return raw[:length - 1].decode("utf-8") if length > 1 else ""  # CDR strings end with a NUL


def _distinct(block: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct byte strings of columns start:stop of every row, and each row's index among them."""
    rows = np.ascontiguousarray(block[:, start:stop])
    keys = rows.view(np.dtype((np.void, max(stop - start, 1)))).ravel() if stop > start else np.zeros(len(rows), "V1")
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], inverse.ravel()


def _column(block: np.ndarray, leaf: _Leaf, kind: str, name: str) -> pl.Series:
    """One column for every row of `block` (messages of one layout), typed as the per-message path types it."""
    m = len(block)
    if leaf.what == "null":
        return pl.Series(name, [None] * m, dtype=_DTYPES[kind])
    if leaf.what in ("scalar", "array"):
        dtype = np.dtype(_PRIMITIVES[leaf.type])
        count = 1 if leaf.what == "scalar" else leaf.count
        values = np.ascontiguousarray(block[:, leaf.offset:leaf.offset + count * dtype.itemsize]).view(dtype)
        if leaf.type == "bool":
            values = values != 0
        if kind == "list":
            if count == 0:
                return pl.Series(name, [[]] * m, dtype=pl.List(pl.Float64))
            return pl.Series(name, values.astype(np.float64)).cast(pl.List(pl.Float64))
        return pl.Series(name, values.ravel().astype(np.float64 if kind == "float" else np.int64))
    if leaf.what == "string":
        distinct, inverse = _distinct(block, leaf.offset, leaf.offset + max(leaf.count - 1, 0))
        texts = pl.Series(name, [row.tobytes().decode("utf-8") for row in distinct], dtype=pl.String)
        return texts.gather(inverse)
    # A string array: its strings (with the equal length prefixes between them) as one byte run per message.
    first = leaf.strings[0][0] if leaf.strings else 0
    stop = leaf.strings[-1][0] + leaf.strings[-1][1] if leaf.strings else 0
    distinct, inverse = _distinct(block, first, stop)
    lists = [[_text(row[o - first:o - first + n].tobytes(), n) for o, n in leaf.strings] for row in distinct]
    return pl.Series(name, lists, dtype=pl.List(pl.String)).gather(inverse)


@dataclass
class Layout:
    """Where a template message keeps its length prefixes and the mapped fields."""

    size: int
    head: bytes  # the encapsulation header
    prefix_columns: np.ndarray  # byte columns of every length prefix
    prefix_bytes: np.ndarray  # their values in the template
    leaves: list[_Leaf]

    def matches(self, block: np.ndarray) -> np.ndarray:
        """Rows of `block` (messages of this size) laid out like the template."""
        same = (block[:, 0] == self.head[0]) & (block[:, 1] == self.head[1])
        if len(self.prefix_columns):
            same &= (block[:, self.prefix_columns] == self.prefix_bytes).all(axis=1)
        return same


def layout(msgdefs: dict[str, Any], root: str, template: np.ndarray, paths: Sequence[tuple[str, str]]) -> Layout:
    """The layout of one message of type `root`, and its leaf for each (path, kind); Unfit when not readable here."""
    if len(template) < 4 or not template[1] & 1:
        raise Unfit("not little-endian CDR")  # big-endian data keeps the per-message decoder
    msgdef = msgdefs.get(root)
    if msgdef is None:
        raise Unfit(f"no definition of {root}")
    walk = _Walk(msgdefs, template)
    walk.message(msgdef, "")
    leaves = [walk.resolve(path) for path, _ in paths]
    for leaf, (path, kind) in zip(leaves, paths):
        if not _fits(leaf, kind):
            raise Unfit(f"{path} is not read here as {kind}")
    columns = np.array([p + k for p in walk.prefixes for k in range(4)], dtype=np.intp)
    return Layout(len(template), template[:2].tobytes(), columns, template[columns], leaves)


def decode_rows(
    msgdefs: dict[str, Any], root: str, block: np.ndarray, paths: Sequence[tuple[str, str]], tries: int = MAX_LAYOUTS
) -> tuple[list[tuple[np.ndarray, list[pl.Series]]], np.ndarray, int]:
    """Decode `paths` from every message of `block` (rows: messages of one size) that fits a layout.

    Returns ([(row indices, columns)] per layout found, indices of the rows left to the per-message
    decoder, templates tried (at most `tries`)).
    """
    budget = tries
    left = np.arange(len(block))
    done: list[tuple[np.ndarray, list[pl.Series]]] = []
    unfit: list[int] = []
    while len(left) and tries > 0:
        tries -= 1
        rows = block[left]
        try:
            found = layout(msgdefs, root, rows[0], paths)
        except Unfit:
            unfit.append(int(left[0]))
            left = left[1:]
            continue
        same = found.matches(rows)
        sub = rows[same]
        done.append((left[same], [_column(sub, leaf, kind, path) for leaf, (path, kind) in zip(found.leaves, paths)]))
        left = left[~same]
    return done, np.sort(np.concatenate([np.array(unfit, dtype=left.dtype), left])), budget - tries
