"""The model loader node: verifies signed models and drives the switch across workers."""

from vigil.nodes.loader._node import Config, LoaderConfig, run

__all__ = ["Config", "LoaderConfig", "run"]
