"""Which landing batches the pipeline serves, and whether each changed since it was ingested.

One place for the sensor, the CLI and the demo: a batch is served when its source folder has a
valid mapping; its fingerprint covers its file listing and the mapping (with the robot profile),
so editing either makes the batch pending again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from foundations import landing
from foundations.catalog import list_configs
from foundations.ingest import MappingError, load_mapping
from foundations.profile import ProfileError


@dataclass
class LandingState:
    fingerprints: dict[str, str] = field(default_factory=dict)  # partition key -> current fingerprint
    problems: list[str] = field(default_factory=list)  # batches that cannot be served, and why


def landing_state() -> LandingState:
    state = LandingState()
    known = set(list_configs("sources"))
    mappings: dict[str, object] = {}
    for key in landing.list_batches():
        source, _ = landing.split_key(key)
        if source not in known:
            state.problems.append(f"{key}: no mapping datasets/sources/{source}.yaml for landing folder {source}/")
            continue
        if source not in mappings:
            try:
                mappings[source] = load_mapping(source)
            except (MappingError, ProfileError) as exc:
                mappings[source] = exc
        mapping = mappings[source]
        if isinstance(mapping, Exception):
            state.problems.append(f"{key}: {mapping}")
            continue
        state.fingerprints[key] = landing.batch_fingerprint(key, mapping.file_glob, mapping.fingerprint, mapping.format)
    return state


def ingested_fingerprint(instance: dg.DagsterInstance, key: str) -> str | None:
    """The fingerprint recorded by the last materialization of raw_log_files for this batch."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_log_files"), asset_partitions=[key]), limit=1
    ).records
    seen = records[0].asset_materialization.metadata.get("fingerprint") if records else None
    return seen.value if seen is not None else None


def pending_batches(instance: dg.DagsterInstance, state: LandingState | None = None) -> list[str]:
    """Served batches never ingested, or whose files, mapping or robot profile changed since."""
    state = state or landing_state()
    return [key for key, fp in state.fingerprints.items() if ingested_fingerprint(instance, key) != fp]
