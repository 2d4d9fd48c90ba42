"""The exits of local worker processes, seen through pidfds the ingest's poller waits on.

A killed process closes its sockets before its exit is visible: a connection drop can reach
the ingest while the process still reads as running (about one SIGKILL in four, measured).
Judged by the drop alone, such a worker kept its credit and took new work into a connection
that no longer existed until its silence was noticed, and the surviving workers sat idle
meanwhile. A pidfd turns readable only once the process has exited, whatever its sockets did.
"""

from __future__ import annotations

import os
from typing import Any

import zmq

from vigil.bus.closing import Closing

__all__ = ["WorkerExits"]


class WorkerExits(Closing):
    """One pidfd per watched worker process, registered in a poller; `handle` names the
    processes that exited. Where pidfds are unavailable nothing is watched (the connection
    drop and the heartbeat silence still are)."""

    def __init__(self, poller: zmq.Poller) -> None:
        self._poller = poller
        self._fds: dict[int, int] = {}  # pidfd -> pid
        self._pids: set[int] = set()
        self.gone: list[int] = []  # pids that were gone before they could be watched

    def watch(self, pid: int) -> None:
        """Watch `pid` from now on (again: nothing)."""
        if pid in self._pids:
            return
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.gone.append(pid)
            return
        except (OSError, AttributeError):  # no pidfds here (old kernel, another OS)
            return
        self._pids.add(pid)
        self._fds[fd] = pid
        self._poller.register(fd, zmq.POLLIN)

    def handle(self, events: dict[Any, int]) -> list[int]:
        """Take the pidfds out of a poll's `events`: the pids that exited (no longer watched)."""
        exited, self.gone = self.gone, []
        for fd in [fd for fd in self._fds if events.pop(fd, 0)]:
            exited.append(self._forget(fd))
        return exited

    def _forget(self, fd: int) -> int:
        pid = self._fds.pop(fd)
        self._pids.discard(pid)
        self._poller.unregister(fd)
        os.close(fd)
        return pid

    def close(self) -> None:
        """Close every pidfd."""
        for fd in list(self._fds):
            self._forget(fd)
