"""The positions file: saved when a publisher appears, else at most once a second, and at stop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import zmq

from vigil.bus.pubsub import Subscriber
from vigil.nodes.logger._positions import SAVE_EVERY_NS, PositionsFile

pytestmark = pytest.mark.verifies("SR-LOG-003")


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def sub(short_tmp: Path) -> Iterator[Subscriber]:
    """A subscriber whose positions the tests set with `resume`."""
    with zmq.Context() as ctx, Subscriber(ctx, f"ipc://{short_tmp}/bus", ["t"]) as sub:
        yield sub


def _saved(path: Path) -> dict[str, list[list[object]]]:
    return msgspec.msgpack.decode(path.read_bytes())  # type: ignore[no-any-return]


def test_saved_when_a_publisher_appears_else_once_a_second_and_at_stop(
    sub: Subscriber, short_tmp: Path
) -> None:
    """A new publisher is saved at once; a newer sequence of a known one waits for the second
    to pass, or for the final save."""
    clock = Clock()
    positions = PositionsFile(short_tmp / "log.store.positions", clock)
    assert positions.save(sub) and _saved(positions.path) == {}
    clock.now += 1_000_000
    sub.resume({"t": [("ingest", 0, 7, 5)]})
    assert positions.save(sub)
    clock.now += 1_000_000
    sub.resume({"t": [("ingest", 0, 7, 9)]})
    assert not positions.save(sub)
    assert _saved(positions.path) == {"t": [["ingest", 0, 7, 5]]}
    clock.now += SAVE_EVERY_NS
    assert positions.save(sub)
    assert _saved(positions.path) == {"t": [["ingest", 0, 7, 9]]}
    sub.resume({"t": [("ingest", 0, 7, 12)]})
    assert positions.save(sub, final=True)
    assert _saved(positions.path) == {"t": [["ingest", 0, 7, 12]]}


def test_a_restart_resumes_from_the_saved_positions(sub: Subscriber, short_tmp: Path) -> None:
    """What one logger saved, the next loads into its subscriber."""
    clock = Clock()
    PositionsFile(short_tmp / "p", clock).save(_with(sub, {"t": [("ingest", 0, 7, 5)]}), final=True)
    with zmq.Context() as ctx, Subscriber(ctx, f"ipc://{short_tmp}/bus2", ["t"]) as fresh:
        assert PositionsFile(short_tmp / "p", clock).resume(fresh) == 1
        assert fresh.positions() == {"t": [("ingest", 0, 7, 5)]}


def test_a_failed_save_is_kept_as_the_problem_and_retried(sub: Subscriber, short_tmp: Path) -> None:
    """A disk that refuses the file leaves the reason in `problem`; the next save that
    succeeds clears it."""
    clock = Clock()
    positions = PositionsFile(short_tmp / "log.store.positions", clock)
    (short_tmp / "log.store.tmp").symlink_to("/dev/full")
    assert not positions.save(sub)
    assert "No space left" in positions.problem
    (short_tmp / "log.store.tmp").unlink()
    assert positions.save(sub)
    assert positions.problem == ""


def _with(sub: Subscriber, positions: dict[str, list[tuple[str, int, int, int]]]) -> Subscriber:
    sub.resume(positions)
    return sub
