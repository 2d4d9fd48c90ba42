"""The ingest node: the front door that validates, limits, dispatches and answers requests."""

from vigil.nodes.ingest._contract import (
    KIND,
    Config,
    DegradedPolicy,
    EvidenceConfig,
    IngestConfig,
    rss_budget,
)
from vigil.nodes.ingest._peers import TenantBinding
from vigil.nodes.ingest._ratelimit import RateLimitConfig

__all__ = [
    "KIND",
    "Config",
    "DegradedPolicy",
    "EvidenceConfig",
    "IngestConfig",
    "RateLimitConfig",
    "TenantBinding",
    "rss_budget",
]
