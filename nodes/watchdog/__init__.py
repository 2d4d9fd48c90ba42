"""The watchdog node: the safety state machine over heartbeats, timeouts and a health probe."""

from vigil.nodes.watchdog._contract import KIND, Config, ProbeConfig, WatchdogConfig

__all__ = ["KIND", "Config", "ProbeConfig", "WatchdogConfig"]
