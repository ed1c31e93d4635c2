"""Dagster assets, one module per stage group; domain logic lives in plain functions elsewhere."""
