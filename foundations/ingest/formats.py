"""Log formats a source mapping's `format:` may name, and the reader of each.

A reader is `read(path: Path, mapping: SourceMapping) -> McapLog` (the decoded topics a mapping
needs, one frame per topic; see `foundations.ingest.mcap_source.McapLog`). It raises
`UnreadableLog` when the file cannot be read and `FieldMismatch` when a mapped field does not
fit the messages. Readers are named by import path so that validating a mapping does not
import every decoder; adding a format is one line here plus its module.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

READERS: dict[str, str] = {
    "mcap": "foundations.ingest.mcap_source:read_mcap",  # ROS 2 MCAP, CDR decoded by mcap-ros2-support
}
FORMATS: tuple[str, ...] = tuple(READERS)


def reader_for(fmt: str) -> Callable[..., Any]:
    """The read function of a format; ValueError listing the known formats for another name."""
    if fmt not in READERS:
        raise ValueError(f"unknown log format {fmt!r}; known: {', '.join(FORMATS)}")
    module, _, name = READERS[fmt].partition(":")
    return getattr(import_module(module), name)
