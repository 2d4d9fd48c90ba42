"""The ingest node: the front door that validates, limits, dispatches and answers requests."""

from vigil.nodes.ingest._contract import KIND, Config, DegradedPolicy, IngestConfig
from vigil.nodes.ingest._ratelimit import RateLimitConfig

__all__ = ["KIND", "Config", "DegradedPolicy", "IngestConfig", "RateLimitConfig"]
