"""The watchdog node: the safety state machine over heartbeats, timeouts and a health probe."""

from vigil.nodes.watchdog._node import Config, ProbeConfig, WatchdogConfig, run

__all__ = ["Config", "ProbeConfig", "WatchdogConfig", "run"]
