"""Signals as poller events: handlers that record each signal and wake a `zmq.Poller` at once."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterable
from contextlib import ExitStack
from types import FrameType
from typing import Any, Self

import zmq

from vigil.bus.closing import Closing

__all__ = ["SignalWakeup"]


class SignalWakeup(Closing):
    """Catches `signals` inside a `with` block: records each and wakes the poller it is in.

    Python runs a signal's handler only between bytecodes of the main thread, so a loop blocked
    in `zmq_poll` would notice it at its next timeout. The C-level handler also writes to the
    wake-up socket (`signal.set_wakeup_fd`), which the loop registers in its poller: the wait
    ends at once and the loop finds the signal in `received`. `register` adds the socket to a
    poller and `handle` takes it out of the poll's events again. Leaving the block restores the
    previous handlers and wake-up fd and closes the socket pair. Enter it in the main thread.
    """

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signal.Signals(sig) for sig in signals)
        # Each signal with how often it arrived, in order of first arrival (bounded: a
        # launcher sees SIGCHLD for every child exit).
        self.received: dict[signal.Signals, int] = {}
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        # A poller reports a plain descriptor by its number, so that is what gets registered.
        self._fd = self._read.fileno()
        self._restore = ExitStack()

    def fileno(self) -> int:
        """The wake-up socket's descriptor: readable once a signal arrived (-1 once closed)."""
        return self._read.fileno()

    def register(self, poller: zmq.Poller) -> None:
        """Add the wake-up socket to a poller."""
        poller.register(self._fd, zmq.POLLIN)

    def handle(self, events: dict[Any, int]) -> bool:
        """Take the wake-up out of a poll's `events` and drain it; whether it had woken."""
        if not events.pop(self._fd, 0):
            return False
        self._drain()
        return True

    def __enter__(self) -> Self:
        return self.install()

    def install(self) -> Self:
        """Install the handlers and the wake-up fd (what entering the `with` block does)."""
        try:
            previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
            self._restore.callback(signal.set_wakeup_fd, previous_fd)
            for sig in self.signals:
                previous = signal.signal(sig, self._on_signal)
                self._restore.callback(signal.signal, sig, previous)
        except BaseException:
            self._restore.close()
            raise
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.received[sig] = self.received.get(sig, 0) + 1

    def first(self, among: Iterable[int] | None = None) -> signal.Signals | None:
        """The first signal that arrived (of those in `among`, when given), or None."""
        wanted = None if among is None else set(among)
        return next((sig for sig in self.received if wanted is None or sig in wanted), None)

    def _drain(self) -> None:
        """Empty the wake-up socket once the poller reported it readable."""
        try:
            while self._read.recv(64):
                pass
        except BlockingIOError:
            return

    def close(self) -> None:
        """Restore the previous handlers and wake-up fd, then close the sockets; idempotent."""
        self._restore.close()
        self._read.close()
        self._write.close()
