"""The demo sink node: consumes perception results from the bus, as a planner would."""

from vigil.nodes.demo_sink._contract import KIND, Config, SinkConfig

__all__ = ["KIND", "Config", "SinkConfig"]
