"""Ingestion: fleet logs (MCAP, rosbag2, ROS 1 bags, HDF5, LeRobot; see foundations.ingest.formats) into the canonical episode table."""
from foundations.ingest.align import TRIMS_SCHEMA
from foundations.ingest.formats import FORMATS
from foundations.ingest.ingest import LABELS_SCHEMA, IngestResult, empty_result, ingest_file, ingest_files
from foundations.ingest.mapping import MappingError, SourceMapping, load_mapping

__all__ = [
    "FORMATS", "LABELS_SCHEMA", "TRIMS_SCHEMA", "IngestResult", "MappingError", "SourceMapping", "empty_result", "ingest_file",
    "ingest_files", "load_mapping",
]
