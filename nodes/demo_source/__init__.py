"""The demo source node: camera frames at a set rate, some deliberately invalid, through the
client API."""

from vigil.nodes.demo_source._contract import KIND, Config, PacingConfig, SourceConfig

__all__ = ["KIND", "Config", "PacingConfig", "SourceConfig"]
