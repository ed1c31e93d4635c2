"""The content hash of a published dataset: what it holds, not how Arrow happens to store it.

sha256 over the table's rows in the order given (publishing sorts by episode_id,
step first), column by column in sorted name order. Each column contributes its
name, a canonical type name, its null mask, and its values in a fixed little-endian
encoding (strings and binaries as lengths plus bytes, lists as lengths plus their
flattened values). Chunking, slicing, validity buffers, string/list offset widths
and schema metadata therefore never change the hash, and neither do creation
times: two tables with the same values hash the same across runs and library versions.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HASH_DOMAIN = b"robocurate-content-v1"


def table_content_hash(table: pa.Table) -> str:
    """Hex sha256 of the table's contents in its current row order (see module docstring)."""
    digest = hashlib.sha256(HASH_DOMAIN)
    digest.update(struct.pack("<q", table.num_rows))
    for name in sorted(table.column_names):
        _bytes(digest, name.encode("utf-8"))
        _array(digest, table.column(name).combine_chunks())
    return digest.hexdigest()


def canonical_type(t: pa.DataType) -> str:
    """Type name that ignores storage variants (large_string == string, large_list == list)."""
    if pa.types.is_dictionary(t):
        return canonical_type(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "binary"
    if _is_list(t):
        return f"list<{canonical_type(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{t.field(i).name}:{canonical_type(t.field(i).type)}"
                                    for i in range(t.num_fields)) + ">"
    return str(t)


def _is_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


def _bytes(digest: Any, data: bytes | memoryview) -> None:
    # Length-prefixed so that adjacent fields can never run into each other.
    digest.update(struct.pack("<q", len(data)))
    digest.update(data)


def _array(digest: Any, arr: pa.Array) -> None:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    _bytes(digest, canonical_type(t).encode("utf-8"))
    nulls = arr.is_null().to_numpy(zero_copy_only=False)
    _bytes(digest, np.packbits(nulls).tobytes())
    if pa.types.is_null(t):
        return
    if pa.types.is_boolean(t):
        _bytes(digest, np.packbits(arr.fill_null(False).to_numpy(zero_copy_only=False)).tobytes())
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        values = arr.fill_null(0).to_numpy(zero_copy_only=False)
        _bytes(digest, values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes())
    elif pa.types.is_temporal(t):
        width = pa.int32() if t.bit_width == 32 else pa.int64()
        _bytes(digest, arr.view(width).fill_null(0).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    elif canonical_type(t) in ("string", "binary"):
        _blobs(digest, arr, pa.large_string() if canonical_type(t) == "string" else pa.large_binary())
    elif _is_list(t):
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        _bytes(digest, lengths.astype("<i8").tobytes())
        _array(digest, pc.list_flatten(arr))
    elif pa.types.is_struct(t):
        for child in arr.flatten():
            _array(digest, child)
    else:
        # Rare types (decimals, maps, unions): their IPC form is deterministic for equal arrays.
        sink = pa.BufferOutputStream()
        one = pa.table({"v": arr})
        with pa.ipc.new_stream(sink, one.schema) as writer:
            writer.write_table(one)
        _bytes(digest, memoryview(sink.getvalue()))


def _blobs(digest: Any, arr: pa.Array, wide: pa.DataType) -> None:
    """Lengths then concatenated bytes of a string/binary array, nulls as empty values."""
    empty = "" if pa.types.is_large_string(wide) else b""
    arr = arr.cast(wide).fill_null(empty)
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype="<i8")[arr.offset: arr.offset + n + 1]
    _bytes(digest, np.diff(offsets).astype("<i8").tobytes())
    data = arr.buffers()[2]
    start, end = (int(offsets[0]), int(offsets[-1])) if n else (0, 0)
    _bytes(digest, memoryview(data)[start:end] if data is not None and end > start else b"")
