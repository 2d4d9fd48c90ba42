"""Power loss at every write and msync boundary of the log store, torn pages included."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from vigil.nodes.logger._format import Entry, decode_group_header
from vigil.nodes.logger._scan import open_view, verify_image
from vigil.nodes.logger.store import FaultClass, LogStore, StoreConfig, StoreLayoutError
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic

pytestmark = pytest.mark.verifies("SR-LOG-002")

SIZE = 32 * 1024
GROUP = 4096
# The writer's sessions: (entries appended, how the session ends).
SESSIONS = ((1400, "close"), (1300, "crash"), (1400, "close"))
WORKERS = 2

Written = dict[int, tuple[str, str, bytes]]


def _config() -> StoreConfig:
    return StoreConfig(
        path="sim", size_bytes=SIZE, group_bytes=GROUP, commit_latency_ms=5.0,
        background_commit=False,
    )  # fmt: skip


def _oldest_retained(image: bytearray) -> int:
    """The first sequence number the writer still retains, read from its own (live) view."""
    try:
        view = open_view(image)
    except StoreLayoutError:  # before creation finishes there is no store, nor retention
        return 0
    live = view.live_groups()
    if not live:
        return 0
    header = decode_group_header(image, view.geo.group_offset(live[0]))
    return header.first_seq if header is not None else 0


def record_workload() -> tuple[RecordingMedium, Written, int]:
    """Run the writer over the simulated disk: three sessions, one ending in a crash."""
    medium = RecordingMedium(bytes(SIZE))
    written: Written = {}
    current: list[LogStore] = []

    def probe() -> tuple[int, ...]:
        committed = current[-1].stats.committed_seq if current else 0
        return committed, _oldest_retained(medium.image)

    medium.probe = probe
    rng = random.Random(20_240_601)
    clock = SimClock()
    mono = SimMonotonic(step_ns=1_300_000)
    for count, ending in SESSIONS:
        store = LogStore.open(_config(), clock=clock, medium=medium, monotonic_ns=mono)
        current.append(store)
        for _ in range(count):
            node = rng.choice(("ingest", "worker-0", "watchdog"))
            payload = rng.randbytes(rng.choice((0, 1, 17, 64, 180, 300)))
            seq = store.append(node=node, event="diag.event", payload=payload)
            written[seq] = (node, "diag.event", payload)
        if ending == "close":
            store.close()
    return medium, written, current[-1].stats.committed_seq


def _check(image: bytearray, committed: int, oldest: int, written: Written) -> str | None:
    """None when the image honours the contract at this cut, else what broke."""
    accepted: list[Entry] = []
    report = verify_image(image, allow_fallback_clock=True, on_entry=accepted.append)
    if not report.ok:
        if committed == 0 and report.exit_code == FaultClass.UNREADABLE:
            return None  # the power failed while the store was being created: nothing to keep
        return f"verify rejects the crashed image: {report.faults}"
    seqs: list[int] = []
    for entry in accepted:
        want = written.get(entry.seq)
        if want is not None and (entry.node, entry.event, entry.payload) != want:
            return f"seq {entry.seq} accepted but differs from what was written"
        seqs.append(entry.seq)
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False:
        return "accepted entries are not one contiguous run"
    if committed and (not seqs or seqs[-1] < committed):
        return f"committed seq {committed} lost (last accepted {seqs[-1] if seqs else None})"
    if committed >= oldest > 0 and seqs and seqs[0] > oldest:
        return f"retained seq {oldest} lost (first accepted {seqs[0]})"
    medium = RecordingMedium(image)
    later = SimClock(start_ns=2_000_000_000_000_000_000)
    with LogStore.open(_config(), clock=later, medium=medium, monotonic_ns=SimMonotonic()):
        pass
    after = verify_image(medium.image, allow_fallback_clock=True)
    if not after.ok or not after.clean:
        return f"verify after recovery: {after.faults}"
    if committed and (after.last_seq or 0) < committed:
        return "recovery dropped committed entries"
    return None


def sweep(worker: int, workers: int) -> tuple[int, list[str]]:
    """Check every `workers`-th cut from `worker` on; (cuts checked, failures)."""
    medium, written, final = record_workload()
    failures: list[str] = []
    checked = 0
    for number, (cut, image) in enumerate(medium.replay()):
        if number % workers != worker:
            continue
        tag = medium.ops[cut.index].tag if cut.index < len(medium.ops) else medium.ops[-1].tag
        committed, oldest = tag if tag else (0, 0)
        if cut.index == len(medium.ops):
            committed = final
        problem = _check(image, committed, oldest, written)
        checked += 1
        if problem is not None:
            failures.append(f"cut {cut.index}+{cut.torn}: {problem}")
    return checked, failures


def _all_cuts() -> Iterator[int]:
    medium, _, _ = record_workload()
    return iter(range(sum(1 for _ in medium.cuts(4096))))


def test_workload_reaches_ten_thousand_cut_points() -> None:
    """The recorded workload offers at least 10,000 distinct power-loss points."""
    assert sum(1 for _ in _all_cuts()) >= 10_000


def test_power_loss_at_every_cut_point_keeps_committed_entries() -> None:
    """At every cut: no committed entry lost, no corrupt one accepted, chain intact on recovery."""
    with ProcessPoolExecutor(WORKERS, mp_context=get_context("fork")) as pool:
        results = list(pool.map(sweep, range(WORKERS), [WORKERS] * WORKERS))
    checked = sum(count for count, _ in results)
    failures = [f for _, found in results for f in found]
    assert checked >= 10_000
    assert failures == [], "\n".join(failures[:20])
