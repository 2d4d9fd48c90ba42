"""SignalWakeup: signals recorded and turned into poller events, handlers restored on exit."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import pytest
import zmq

from vigil.bus.signals import SignalWakeup

USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2
WAIT_MS = 10_000  # only a bound: the poll returns as soon as the wake-up socket is readable


def _known(signum: int, frame: FrameType | None) -> None:
    """The handler each test starts with (so a stray signal never ends the test run)."""


@pytest.fixture(autouse=True)
def known_handlers() -> Iterator[None]:
    before = {sig: signal.signal(sig, _known) for sig in (USR1, USR2)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_a_signal_wakes_the_poller_and_is_recorded() -> None:
    """A signal makes the registered wake-up readable and lands in `received`."""
    with SignalWakeup([USR1]) as wakeup:
        poller = zmq.Poller()
        wakeup.register(poller)
        os.kill(os.getpid(), USR1)
        events = dict(poller.poll(WAIT_MS))
        assert wakeup.handle(events)
        assert events == {}  # taken out: the caller sees only its own sockets
        assert wakeup.received == {USR1: 1}


def test_received_counts_signals_in_order_of_first_arrival() -> None:
    """Each signal is counted; `first` names the earliest, optionally among some only."""
    with SignalWakeup([USR1, USR2]) as wakeup:
        assert wakeup.first() is None
        for sig in (USR2, USR1, USR2):
            os.kill(os.getpid(), sig)
        assert wakeup.received == {USR2: 2, USR1: 1}
        assert list(wakeup.received) == [USR2, USR1]
        assert wakeup.first() == USR2
        assert wakeup.first([USR1]) == USR1
        assert wakeup.first([signal.SIGTERM]) is None


def test_handled_wakeup_is_quiet_until_the_next_signal() -> None:
    """`handle` drains every pending wake-up; a poll then waits again until the next signal."""
    with SignalWakeup([USR1]) as wakeup:
        poller = zmq.Poller()
        wakeup.register(poller)
        os.kill(os.getpid(), USR1)
        os.kill(os.getpid(), USR1)
        assert wakeup.handle(dict(poller.poll(WAIT_MS)))
        assert not wakeup.handle(dict(poller.poll(0)))
        os.kill(os.getpid(), USR1)
        assert wakeup.handle(dict(poller.poll(WAIT_MS)))


def test_leaving_restores_handlers_and_wakeup_fd_and_closes() -> None:
    """On exit the previous handlers and wake-up fd are back and the socket pair is closed."""
    outer_r, outer_w = socket.socketpair()
    outer_w.setblocking(False)
    original_fd = signal.set_wakeup_fd(outer_w.fileno())
    try:
        with SignalWakeup([USR1]) as wakeup:
            assert signal.getsignal(USR1) is not _known
        assert signal.getsignal(USR1) is _known
        assert signal.set_wakeup_fd(original_fd) == outer_w.fileno()
        assert wakeup.fileno() == -1
    finally:
        signal.set_wakeup_fd(original_fd)
        outer_r.close()
        outer_w.close()


def test_close_is_idempotent_and_covers_a_wakeup_never_entered() -> None:
    """`close` may run twice, and on a wake-up whose handlers were never installed."""
    wakeup = SignalWakeup([USR1])
    wakeup.close()
    wakeup.close()
    assert signal.getsignal(USR1) is _known


def test_installing_outside_the_main_thread_fails_and_changes_nothing() -> None:
    """Handlers belong to the main thread: elsewhere `install` raises and leaves all as it was."""
    wakeup = SignalWakeup([USR1])
    errors: list[BaseException] = []

    def install() -> None:
        try:
            wakeup.install()
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    wakeup.close()
    assert len(errors) == 1
    assert signal.getsignal(USR1) is _known
