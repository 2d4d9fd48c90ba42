"""Resolve a configured endpoint: a full zmq address, or a socket name in the run directory."""

from __future__ import annotations

from vigil.bus.rundir import RunDir

__all__ = ["resolve_endpoint"]


def resolve_endpoint(run: RunDir, name: str) -> str:
    """`tcp://…`/`ipc://…` pass through; a bare name becomes an ipc socket in the run dir."""
    return name if "://" in name else run.ipc(name)
