"""Ingestion is partitioned by landing batch, keyed `<source>/<batch>`: a run touches only new batches."""
import dagster as dg

landing_batches = dg.DynamicPartitionsDefinition(name="landing_batch")
