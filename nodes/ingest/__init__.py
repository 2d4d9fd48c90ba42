"""The ingest node: the front door that validates, limits, dispatches and answers requests."""

from vigil.nodes.ingest._node import Config, IngestConfig, run

__all__ = ["Config", "IngestConfig", "run"]
