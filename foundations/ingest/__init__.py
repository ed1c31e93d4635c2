"""Ingestion: ROS 2 MCAP fleet logs into the canonical episode table (foundations.schema)."""
from foundations.ingest.ingest import IngestResult, empty_result, ingest_file, ingest_files
from foundations.ingest.mapping import MappingError, SourceMapping, load_mapping

__all__ = ["IngestResult", "MappingError", "SourceMapping", "empty_result", "ingest_file", "ingest_files", "load_mapping"]
