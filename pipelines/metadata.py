"""Helpers that turn results into Dagster metadata people can read at a glance."""
from __future__ import annotations

import base64

import dagster as dg
import polars as pl

from foundations import storage


def png_metadata(png: bytes, name: str) -> dict[str, dg.MetadataValue]:
    """Embed a PNG in the asset's metadata (rendered in the UI) and keep a copy under `plots/`."""
    path = storage.area("plots") / f"{name}.png"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)
    encoded = base64.b64encode(png).decode()
    return {
        f"{name}_plot": dg.MetadataValue.md(f"![{name}](data:image/png;base64,{encoded})"),
        f"{name}_plot_path": dg.MetadataValue.path(str(path)),
    }


def md_table(df: pl.DataFrame, max_rows: int = 20) -> dg.MetadataValue:
    """A small markdown table of a frame's first rows."""
    if df.is_empty():
        return dg.MetadataValue.md("_none_")
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    rows = "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in df.head(max_rows).iter_rows())
    more = f"\n… and {len(df) - max_rows} more rows" if len(df) > max_rows else ""
    return dg.MetadataValue.md(head + rows + more)


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value).replace("|", "\\|")
