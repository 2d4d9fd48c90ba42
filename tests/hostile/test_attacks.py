"""Hostile clients against the real pipeline: each attack beside a well-behaved client.

Every test asserts what the well-behaved client kept (>= 99 % success), that the safety state
never left NORMAL, that the ingest was never restarted and stayed within its memory budget,
and what the attacker got back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.hostile.conftest import FRAME_LIMIT, INGEST, OPEN_FILES, Hostile
from vigil.nodes._preload import shared_object
from vigil.nodes.ingest import KIND
from vigil.nodes.logger.store import read_entries
from vigil.schemas import AuditId, DiagCode

pytestmark = pytest.mark.verifies("SR-DLN-003", "SR-RL-002", "SR-RL-003", "SR-SEC-003")


@pytest.mark.parametrize(
    ("priority", "refusal"),
    [
        pytest.param("0", f"DEADLINE_EXCEEDED {DiagCode.DEADLINE_INFEASIBLE}", id="own-priority"),
        pytest.param("7", f"PERMISSION_DENIED {DiagCode.IDENTITY_REFUSED}", id="safety-priority"),
    ],
)
def test_a_zero_budget_storm_is_refused_and_never_degrades(
    hostile: Hostile, priority: str, refusal: str
) -> None:
    """Requests with no budget at all are refused at once as the client's fault (DIA-3003),
    which the watchdog never counts; at the safety priority, which only the launch's nodes
    may use, they are refused for that first. The state stays NORMAL."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run("zero-budget", "--count", "600", "--priority", priority)
    hostile.assert_unharmed(start, pid)
    # It reads only when its socket pushes back: on a busy host some refusals may find its
    # reply backlog full; those are dropped and reported to it, never lost.
    replies = dict(summary["replies"])
    refused, dropped = replies.pop(refusal, 0), replies.pop("dropped", 0)
    assert refused > 0
    assert refused + dropped == 600
    assert replies == {}


def test_another_clients_stream_cannot_be_poisoned(hostile: Hostile) -> None:
    """A frame from the end of time on the good client's stream id is judged on the
    attacker's own stream table; the good client's next frames pass."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run("poison", "--stream", hostile.good.stream_id, "--count", "3")
    hostile.assert_unharmed(start, pid)
    assert summary["replies"].get("OK", 0) >= 1


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="one-peer"),
        pytest.param(["--tenant", "*"], id="tenant-per-request"),
        pytest.param(["--tenant", "good"], id="spoofed-tenant"),
        pytest.param(["--priority", "7"], id="at-the-safety-priority"),
        pytest.param(["--priority", "3"], id="at-a-priority-not-granted"),
    ],
)
def test_a_flood_from_one_peer_costs_the_others_nothing(hostile: Hostile, args: list[str]) -> None:
    """6,000 small requests from one peer, as fast as it can send (far beyond its share and
    the refusal pace), fill only its own share; each is answered (or its dropped reply
    reported) with a typed outcome."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run("flood", "--count", "6000", *args)
    hostile.assert_unharmed(start, pid)
    assert sum(summary["replies"].values()) == 6_000


def test_oversize_frames_never_enter_the_ingest(hostile: Hostile) -> None:
    """Frames of 64 MiB are cut at the socket (ZMQ_MAXMSGSIZE): never received whole."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    hostile.run("oversize", "--count", "4", "--bytes", str(64 << 20), "--seconds", "0.5")
    hostile.assert_unharmed(start, pid)


def test_a_frame_somewhat_over_the_limit_gets_a_typed_refusal(hostile: Hostile) -> None:
    """A message a little over the size limit is received and refused with its code
    (DIA-2010), not silently dropped with its connection."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    size = INGEST.max_message_bytes + 4096
    summary = hostile.run("oversize", "--count", "4", "--bytes", str(size), "--seconds", "60")
    hostile.assert_unharmed(start, pid)
    assert summary["replies"] == {f"INVALID_ARGUMENT {DiagCode.SIZE_LIMIT}": 4}


def test_a_queue_filled_with_maximal_frames_stays_within_its_bytes(hostile: Hostile) -> None:
    """Valid frames of the maximal size fill the queue only up to its byte limit; the rest
    are refused early (RESOURCE_EXHAUSTED), the good client keeps its share."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run("flood", "--count", "3000", "--size", str(FRAME_LIMIT))
    hostile.assert_unharmed(start, pid)
    assert sum(summary["replies"].values()) == 3000


def test_replies_a_client_does_not_read_are_dropped_and_reported(hostile: Hostile) -> None:
    """A client that never reads loses replies beyond its backlog (counted, not held); when
    it reads again it is told how many it lost."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    dropped = hostile.counter("ingest", "replies_dropped")
    summary = hostile.run(
        "unread",
        "--count",
        "6000",
        hold_until=lambda: hostile.counter("ingest", "replies_dropped") > dropped + 1000,
    )
    hostile.assert_unharmed(start, pid)
    assert summary["notices"], "the client was never told of its dropped replies"
    assert sum(n["count"] for n in summary["notices"]) > 1000


def test_a_connection_storm_is_refused_and_the_ingest_stays_up(hostile: Hostile) -> None:
    """Four times as many idle connections as the ingest has open files: the door shuts the
    excess down as it comes, the accept guard refuses any that outrun it to the open-file
    limit (on which libzmq would abort), and the good client's connection is untouched."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    refused = hostile.counter("ingest", "connections_refused")
    storm = 4 * OPEN_FILES
    summary = hostile.run(
        "connections",
        "--count",
        str(storm),
        # Until the excess was refused, or the ingest died of it.
        hold_until=lambda: (
            hostile.counter("ingest", "connections_refused")
            >= refused + storm - INGEST.max_connections
            or hostile.ingest_pid != pid
        ),
    )
    hostile.assert_unharmed(start, pid)
    assert summary["closed_by_ingest"] >= storm - INGEST.max_connections


def test_the_ingest_alone_runs_with_the_accept_guard(hostile: Hostile) -> None:
    """The launcher preloads the accept guard into the ingest's process, and into no other
    node's."""
    guard = str(shared_object(KIND.preload[0]))
    guarded = {
        (c.plan.label, c.plan.spec.kind): guard in Path(f"/proc/{c.pid}/maps").read_text()
        for c in hostile.launcher.children
    }
    assert len(guarded) > 1
    assert guarded == {(label, kind): kind == "ingest" for label, kind in guarded}


def test_half_sent_and_endless_messages_are_bounded(hostile: Hostile) -> None:
    """Peers that stop in the middle of a frame hold at most that frame; a peer streaming an
    endless multipart message is cut once the ingest's memory passes its budget."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run(
        "half", "--count", "3", "--bytes", str(INGEST.max_message_bytes), "--seconds", "20"
    )
    hostile.assert_unharmed(start, pid)
    assert summary["endless_cut"]


def test_decode_bombs_cost_linear_work(hostile: Hostile) -> None:
    """Bodies of thousands of empty arrays behind a type error are refused as schema
    violations, each classified by one pass over its bytes."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    summary = hostile.run("bomb", "--count", "2000", "--bytes", "16000")
    hostile.assert_unharmed(start, pid)
    assert summary["replies"] == {f"INVALID_ARGUMENT {DiagCode.SCHEMA_VIOLATION}": 2000}


def _sealed(
    hostile: Hostile, event: str, store: str = "log.store"
) -> list[tuple[bytes, dict[str, Any]]]:
    """(trace id, payload) of every sealed entry of `event` (in the main store, or `store`)."""
    return [
        (e.trace_id, msgspec.msgpack.decode(e.payload))
        for e in read_entries(hostile.launcher.run.path / store)
        if e.event == event
    ]


def _refusals(hostile: Hostile, code: DiagCode) -> list[tuple[bytes, dict[str, Any]]]:
    return [(t, d) for t, d in _sealed(hostile, "diag.event") if d["code"] == code]


def _counted(entries: list[tuple[bytes, dict[str, Any]]]) -> int:
    return sum(d.get("count", 1) for _, d in entries)


def test_a_refusal_flood_leaves_bounded_evidence_and_the_startup_audit(hostile: Hostile) -> None:
    """Refusals are sealed one by one up to a rate, then as aggregates whose counts add up to
    every refusal; each sealed refusal names a trace, even one refused before its envelope
    could be read; the start-up audit entries survive in the evidence store."""
    start, pid = time.monotonic_ns(), hostile.ingest_pid
    codes = (DiagCode.DEADLINE_INFEASIBLE, DiagCode.MALFORMED_FRAME)
    before = {code: _refusals(hostile, code) for code in codes}
    flood = hostile.run("zero-budget", "--count", "12000")
    garbage = hostile.run("garbage", "--count", "3000")
    hostile.assert_unharmed(start, pid)
    assert sum(flood["replies"].values()) == 12_000
    assert sum(garbage["replies"].values()) == 3_000
    sent = {DiagCode.DEADLINE_INFEASIBLE: 12_000, DiagCode.MALFORMED_FRAME: 3_000}
    for code in codes:
        total = _counted(before[code]) + sent[code]
        hostile.until(
            lambda code=code, total=total: _counted(_refusals(hostile, code)) >= total,
            f"every {code} refusal counted in the store",
        )
        entries = _refusals(hostile, code)
        assert _counted(entries) == total
        assert len(entries) - len(before[code]) < 1_000  # bounded, whatever the flood
        assert all(len(trace) == 16 for trace, _ in entries)
        aggregates = [d for _, d in entries if d.get("count", 1) > 1]
        assert aggregates and all(len(d["first_trace_id"]) == 16 for d in aggregates)
    # Audit records go to the evidence store too, which request traffic never writes: the
    # main store may have wrapped by now (how far depends on how fast this host served the
    # suite's floods), the evidence store keeps the start-up audit whatever came since.
    evidence = {a["event"] for _, a in _sealed(hostile, "audit.event", "log.evidence")}
    assert AuditId.REQUEST_REJECTED in evidence
    assert {AuditId.MODEL_VERIFIED, AuditId.MODEL_COMMITTED} <= evidence
    assert AuditId.REQUEST_REJECTED in {a["event"] for _, a in _sealed(hostile, "audit.event")}
