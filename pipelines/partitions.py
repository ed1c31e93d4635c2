"""Ingestion is partitioned by landing batch: a nightly or sensor run touches only new batches."""
import dagster as dg

landing_batches = dg.DynamicPartitionsDefinition(name="landing_batch")
