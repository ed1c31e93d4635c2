"""Raw camera frames (sensor_msgs/Image) to PNG, the lossless encoding the episode table stores.

A raw frame is `height` rows of `step` bytes each, pixels laid out as `encoding` names them
(sensor_msgs/image_encodings). Colour frames are stored as RGB(A), mono as 8- or 16-bit grey,
so a frame decodes to the same pixels whatever order the camera wrote its channels in.
Frames are encoded one message at a time: PNG encoding is per-frame C work in Pillow.
"""
from __future__ import annotations

import io

import numpy as np
import polars as pl
from PIL import Image

# encoding -> (numpy dtype, channels, channel order to reach RGB(A) or None)
ENCODINGS: dict[str, tuple[str, int, list[int] | None]] = {
    "rgb8": ("u1", 3, None),
    "bgr8": ("u1", 3, [2, 1, 0]),
    "rgba8": ("u1", 4, None),
    "bgra8": ("u1", 4, [2, 1, 0, 3]),
    "mono8": ("u1", 1, None),
    "8UC1": ("u1", 1, None),
    "8UC3": ("u1", 3, None),
    "mono16": ("<u2", 1, None),  # 16-bit grey PNG
    "16UC1": ("<u2", 1, None),
}


class RawImageError(ValueError):
    """A raw frame cannot be read as its header says (unknown encoding, too few bytes)."""


def png_from_raw(height: int, width: int, encoding: str, step: int, data: bytes) -> bytes:
    """One sensor_msgs/Image frame encoded as PNG; raises RawImageError saying what does not fit."""
    if encoding not in ENCODINGS:
        raise RawImageError(f"encoding {encoding!r} is not supported (supported: {', '.join(ENCODINGS)})")
    dtype, channels, order = ENCODINGS[encoding]
    row = width * channels * np.dtype(dtype).itemsize
    if height <= 0 or width <= 0 or step < row or len(data) < step * height:
        raise RawImageError(f"a {height}x{width} {encoding} frame needs {row} bytes per row and step >= that, "
                            f"got step {step} and {len(data)} bytes")
    rows = np.frombuffer(data, dtype=np.uint8, count=step * height).reshape(height, step)[:, :row]
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if order is not None:
        pixels = pixels[:, :, order]
    image = Image.fromarray(pixels[:, :, 0].astype(dtype[-2:]) if channels == 1 else np.ascontiguousarray(pixels))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)  # fast: frames are small and zstd-compressed again in Parquet
    return out.getvalue()


def png_column(frame: pl.DataFrame, fields: dict[str, str], data: str) -> tuple[pl.Series, str | None]:
    """PNG of every message of a raw image topic's frame, and the first problem met (None when every frame encodes).

    `fields` names the height, width, encoding and step columns; a frame that does not encode is null.
    """
    cols = [frame.get_column(fields[f]).to_list() for f in ("height", "width", "encoding", "step")]
    out: list[bytes | None] = []
    problem: str | None = None
    bad = 0
    for h, w, enc, step, raw in zip(*cols, frame.get_column(data).to_list()):
        try:
            out.append(png_from_raw(int(h), int(w), str(enc), int(step), raw or b""))
        except RawImageError as exc:
            out.append(None)
            bad += 1
            problem = problem or str(exc)
    if problem is not None:
        problem = f"{bad} of {frame.height} frames do not encode; first: {problem}"
    return pl.Series(data, out, dtype=pl.Binary), problem
