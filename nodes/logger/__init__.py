"""The logger node and the sealed store it alone owns."""

from vigil.nodes.logger.node import Config, LoggerConfig, run

__all__ = ["Config", "LoggerConfig", "run"]
