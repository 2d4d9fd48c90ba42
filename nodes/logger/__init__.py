"""The logger node and the sealed store it alone owns."""

from vigil.nodes.logger._contract import KIND, Config, LoggerConfig
from vigil.nodes.logger._sealer import SEALER

__all__ = ["KIND", "SEALER", "Config", "LoggerConfig"]
