"""Wake the loader when anything in its model's repository folder changes (inotify)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

__all__ = ["RepositoryWatch"]


class _Poke(FileSystemEventHandler):
    def __init__(self, wake: socket.socket) -> None:
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        # A full buffer means a wake-up is already pending; one is enough.
        with contextlib.suppress(BlockingIOError):
            self._wake.send(b"!")


class RepositoryWatch:
    """An inotify watch (through `watchdog`) whose events wake a poller through a socket.

    The observer thread never touches zmq: it only writes a byte the node loop polls for, and
    the loop re-resolves and re-verifies the repository itself.
    """

    def __init__(self, folder: Path) -> None:
        self.fileno_r, self._w = socket.socketpair()
        self.fileno_r.setblocking(False)
        self._w.setblocking(False)
        self._observer = Observer()
        self._observer.schedule(_Poke(self._w), str(folder), recursive=True)

    def fileno(self) -> int:
        """The descriptor to poll for changes."""
        return self.fileno_r.fileno()

    def drain(self) -> None:
        """Consume pending wake-ups."""
        try:
            while self.fileno_r.recv(4096):
                pass
        except BlockingIOError:
            return

    def __enter__(self) -> Self:
        self._observer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._observer.stop()
        self._observer.join()
        self.fileno_r.close()
        self._w.close()
