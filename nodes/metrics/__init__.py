"""The metrics node: one Prometheus endpoint for the whole running system, fed over the bus."""

from vigil.nodes.metrics._contract import KIND, Config, MetricsConfig

__all__ = ["KIND", "Config", "MetricsConfig"]
