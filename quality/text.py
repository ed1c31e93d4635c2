"""Polars expressions that format numbers for readable reasons, one column at a time.

`pl.format` prints floats in their shortest form ("3.2", "0.05000000074505806" for a
float32); reasons read better with a fixed number of decimals ("3.20 s"), and building
them as expressions keeps reason formatting vectorised.
"""
from __future__ import annotations

import polars as pl


def fixed(expr: pl.Expr, digits: int = 2) -> pl.Expr:
    """`expr` as text with exactly `digits` decimals ("-0.05", "3.20"); "n/a" where null or not finite."""
    scale = 10**digits
    value = expr.cast(pl.Float64)
    scaled = (value.abs() * scale).round(0).cast(pl.Int64, strict=False)
    whole = (scaled // scale).cast(pl.String)
    fraction = (scaled % scale).cast(pl.String).str.zfill(digits)
    text = whole if digits == 0 else pl.concat_str([whole, pl.lit("."), fraction])
    sign = pl.when((value < 0) & (scaled > 0)).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.when(value.is_finite()).then(pl.concat_str([sign, text])).otherwise(pl.lit("n/a")).fill_null("n/a")


def integer(expr: pl.Expr) -> pl.Expr:
    """`expr` as whole-number text; "unknown" where null."""
    return expr.cast(pl.Int64, strict=False).cast(pl.String).fill_null("unknown")


def fixed_value(value: float, digits: int = 2) -> str:
    """A Python number with a fixed number of decimals, for constant parts of reasons."""
    return f"{value:.{digits}f}"
