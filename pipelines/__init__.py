"""robocurate's Dagster code location: ingestion, validation wiring, publishing, orchestration."""
