"""Running Great Expectations 1.x suites over polars check frames, in bounded batches.

GX has no polars backend and no useful support for list columns, so callers derive
flat check columns with polars and hand them here. Each frame is converted to pandas
one slice at a time (at most `batch_rows` rows) so memory stays bounded, and every
failing row comes back as the value of the frame's index column, which the caller maps
to its episode.

Building a GX context costs seconds (mostly the import), so one ephemeral context is
built per process on first use and shared by all suites; suites themselves are not
added to the context, so repeated runs do not accumulate state in it.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.expectations import Expectation

DEFAULT_BATCH_ROWS = 250_000
_ASSET = "check_frame"
_LOCK = threading.Lock()  # the shared context's datasource is not safe to mutate concurrently


@dataclass
class ExpectationOutcome:
    """One expectation's result summed over all batches of a frame."""

    name: str
    expectation_type: str
    column: str | None
    kwargs: str  # the expectation's arguments as "key=value, ...", readable in tables
    success: bool = True
    element_count: int = 0
    unexpected_count: int = 0
    unexpected_index: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (no index arrays) for summaries and Dagster metadata."""
        return {
            "name": self.name,
            "expectation": self.expectation_type,
            "column": self.column,
            "kwargs": self.kwargs,
            "success": self.success,
            "element_count": self.element_count,
            "unexpected_count": self.unexpected_count,
        }


def describe_kwargs(kwargs: dict[str, Any]) -> str:
    """An expectation's arguments other than its column, as "key=value, ..."."""
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("column", "result_format") and v is not None)


@lru_cache(maxsize=1)
def _batch_definition() -> "BatchDefinition":
    """The process-wide ephemeral context's whole-dataframe batch definition."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars on every metric pass would flood pipeline logs.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name="robocurate_checks")
    asset = source.add_dataframe_asset(name=_ASSET)
    return asset.add_batch_definition_whole_dataframe("whole_frame")


def expectation(kind: str, name: str, **kwargs: Any) -> "Expectation":
    """Build a GX expectation by class name (e.g. "ExpectColumnValuesToBeBetween").

    `name` goes into the expectation's meta so results can be matched to it.
    """
    import great_expectations.expectations as gxe

    cls = getattr(gxe, kind)
    return cls(meta={"name": name}, **kwargs)


def run_suite(
    frame: pl.DataFrame,
    index: str,
    expectations: list["Expectation"],
    batch_rows: int = DEFAULT_BATCH_ROWS,
    suite_name: str = "robocurate",
) -> dict[str, ExpectationOutcome]:
    """Validate `frame` against `expectations`, slice by slice, and collect failing indices.

    `index` names an integer column of `frame` that becomes the pandas index, so each
    failing row is reported as its value in that column. Returns one outcome per
    expectation, keyed by the `name` in its meta. An expectation that raises inside GX
    (a bug in the suite, not in the data) raises RuntimeError here instead of passing
    silently.
    """
    import great_expectations as gx

    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    outcomes: dict[str, ExpectationOutcome] = {}
    for exp in expectations:
        config = exp.configuration
        kwargs = describe_kwargs(config.kwargs)
        name = exp.meta["name"]
        if name in outcomes:
            raise ValueError(f"two expectations share the name {name!r}")
        outcomes[name] = ExpectationOutcome(
            name=name, expectation_type=config.type, column=config.kwargs.get("column"), kwargs=kwargs
        )
    suite = gx.ExpectationSuite(name=f"{suite_name}-{uuid.uuid4().hex[:8]}", expectations=expectations)
    # COMPLETE lists every failing index; the failing values themselves are not needed.
    result_format = {
        "result_format": "COMPLETE",
        "partial_unexpected_count": 0,
        "exclude_unexpected_values": True,
        "return_unexpected_index_query": False,
    }
    found: dict[str, list[np.ndarray]] = {name: [] for name in outcomes}
    with _LOCK:
        batch_definition = _batch_definition()
        for offset in range(0, max(frame.height, 1), batch_rows):
            pdf = frame.slice(offset, batch_rows).to_pandas().set_index(index)
            # An unnamed index makes GX report failing rows as plain index values.
            pdf.index.name = None
            batch = batch_definition.get_batch(batch_parameters={"dataframe": pdf})
            result = batch.validate(suite, result_format=result_format)
            for res in result.results:
                name = res.expectation_config.meta["name"]
                if res.exception_info and res.exception_info.get("raised_exception"):
                    raise RuntimeError(
                        f"expectation {name!r} raised inside Great Expectations: "
                        f"{res.exception_info.get('exception_message')}"
                    )
                out = outcomes[name]
                out.success &= bool(res.success)
                out.element_count += int(res.result.get("element_count") or 0)
                out.unexpected_count += int(res.result.get("unexpected_count") or 0)
                idx = res.result.get("unexpected_index_list") or []
                if idx:
                    found[name].append(np.asarray(idx, dtype=np.int64))
    for name, parts in found.items():
        if parts:
            outcomes[name].unexpected_index = np.unique(np.concatenate(parts))
    return outcomes
