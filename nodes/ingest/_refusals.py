"""Refusal evidence in bounded form: each refusal sealed on its own up to a rate, then counted.

A flood of refusals must not flood the sealed log (and through it, overwrite what an assessor
needs). Each refusal is sealed individually while the peer's and the ingest's evidence
budgets (token buckets) allow; past them it is counted into an aggregate per peer and
reason, sealed once per interval with its count and the first and last refused request's
trace. Nothing is lost: the individual entries plus the aggregates' counts add up to every
refusal.

The audit trail gets fewer still: audit records are safety evidence, kept in the logger's
evidence store where only newer evidence evicts them, so a flood must not write them at its
own pace. The first refusal after a quiet spell is audited at once; after it, one
`REQUEST_REJECTED` record per `audit_interval` sums up every refusal since (`Summary`).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from vigil.nodes.ingest._ratelimit import TokenBucket
from vigil.schemas import DiagCode, ErrorCode

__all__ = ["Aggregate", "RefusalLog", "Summary"]

OTHER_PEERS = "(other peers)"
_MAX_SUMMARY_PEERS = 64


@dataclass(slots=True)
class Aggregate:
    """Refusals of one peer for one reason, counted since the last seal."""

    peer: str
    code: ErrorCode
    diag: DiagCode
    field: str
    rule: str
    first_trace_id: bytes
    last_trace_id: bytes = b""
    count: int = 1


@dataclass(slots=True)
class Summary:
    """Every refusal since the last audit record: how many, why, from how many peers."""

    first_trace_id: bytes
    last_trace_id: bytes = b""
    count: int = 0
    reasons: Counter[tuple[DiagCode, ErrorCode]] = field(default_factory=Counter)
    peers: set[str] = field(default_factory=set)

    def describe(self) -> str:
        """The audit record's detail: the commonest reason first (the binary record keeps
        32 bytes), then the counts, the peers and the first and last trace."""
        reasons = ", ".join(f"{d} {c} x{n}" for (d, c), n in self.reasons.most_common(8))
        peers = f"{len(self.peers)}{'+' if len(self.peers) >= _MAX_SUMMARY_PEERS else ''}"
        return (
            f"{reasons}; {self.count} refused from {peers} peers; "
            f"first={self.first_trace_id.hex()} last={self.last_trace_id.hex()}"
        )


# implements: SR-LOG-003, SR-ERR-002
class RefusalLog:
    """Decides which refusals are sealed one by one and gathers the rest into aggregates."""

    def __init__(
        self,
        *,
        clock: Callable[[], int],
        rate_per_s: float = 10.0,
        burst: float = 50.0,
        peer_rate_per_s: float = 2.0,
        peer_burst: float = 20.0,
        interval_ns: int = 1_000_000_000,
        audit_interval_ns: int = 60_000_000_000,
        max_keys: int = 256,
    ) -> None:
        self._clock = clock
        now = clock()
        self._total = TokenBucket(rate_per_s, burst, now)
        self._peer_rate = peer_rate_per_s
        self._peer_burst = peer_burst
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._pending: dict[tuple[str, ErrorCode, DiagCode], Aggregate] = {}
        self._interval_ns = interval_ns
        self._max_keys = max_keys
        self._next_ns = now + interval_ns
        self._audit_interval_ns = audit_interval_ns
        self._audit_next_ns = now
        self._summary: Summary | None = None
        self.sealed = 0
        self.aggregated = 0

    def individual(
        self,
        peer: str,
        code: ErrorCode,
        diag: DiagCode,
        *,
        trace_id: bytes,
        field: str = "",
        rule: str = "",
    ) -> bool:
        """Whether this refusal is sealed on its own; if not, it is counted in its aggregate."""
        now = self._clock()
        self._summarise(peer, code, diag, trace_id)
        bucket = self._peers.get(peer)
        if bucket is None:
            if len(self._peers) >= self._max_keys:
                self._peers.popitem(last=False)
            bucket = self._peers[peer] = TokenBucket(self._peer_rate, self._peer_burst, now)
        else:
            self._peers.move_to_end(peer)
        bucket.refill(now)
        self._total.refill(now)
        if bucket.tokens >= 1.0 and self._total.tokens >= 1.0:
            bucket.take(0.0)
            self._total.take(0.0)
            self.sealed += 1
            return True
        self._count(Aggregate(peer, code, diag, field, rule, trace_id, trace_id))
        return False

    def _count(self, refusal: Aggregate) -> None:
        """Add one refusal to its pending aggregate."""
        self.aggregated += 1
        key = (refusal.peer, refusal.code, refusal.diag)
        aggregate = self._pending.get(key)
        if aggregate is None and len(self._pending) >= self._max_keys:
            # Bounded: past this many peers and reasons, the rest share one aggregate.
            key = (OTHER_PEERS, refusal.code, refusal.diag)
            aggregate = self._pending.get(key)
            refusal.peer = OTHER_PEERS
        if aggregate is None:
            self._pending[key] = refusal
            return
        aggregate.count += 1
        aggregate.last_trace_id = refusal.last_trace_id

    def _summarise(self, peer: str, code: ErrorCode, diag: DiagCode, trace_id: bytes) -> None:
        summary = self._summary
        if summary is None:
            summary = self._summary = Summary(trace_id)
        summary.count += 1
        summary.last_trace_id = trace_id
        summary.reasons[(diag, code)] += 1
        if len(summary.peers) < _MAX_SUMMARY_PEERS:
            summary.peers.add(peer)

    @property
    def pending(self) -> bool:
        """Whether refusals were counted that are still to be sealed or audited."""
        return bool(self._pending) or self._summary is not None

    def audit_due(self) -> Summary | None:
        """The refusals to audit now: at once after a quiet spell, then once an interval."""
        now = self._clock()
        if self._summary is None or now < self._audit_next_ns:
            return None
        summary, self._summary = self._summary, None
        self._audit_next_ns = now + self._audit_interval_ns
        return summary

    def due(self) -> list[Aggregate]:
        """The aggregates to seal now: once per interval, those that counted anything."""
        now = self._clock()
        if now < self._next_ns:
            return []
        self._next_ns = now + self._interval_ns
        pending, self._pending = list(self._pending.values()), {}
        return pending

    def drain(self) -> tuple[list[Aggregate], Summary | None]:
        """Every pending aggregate and the audit summary, at once (at shutdown)."""
        pending, self._pending = list(self._pending.values()), {}
        summary, self._summary = self._summary, None
        return pending, summary
