"""The model loader node: verifies signed models and drives the switch across workers."""

from vigil.nodes.loader._contract import KIND, Config, LoaderConfig, PinnedModel

__all__ = ["KIND", "Config", "LoaderConfig", "PinnedModel"]
