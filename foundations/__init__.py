"""Foundations: the canonical schema, the data root, config models, ingestion, versioned publishing
and progress maths. Everything else (quality/, training/, pipelines/) builds on this package;
it imports none of them."""
