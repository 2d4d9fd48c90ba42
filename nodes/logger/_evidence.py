"""The logger's two sealed stores: every message in the main ring, safety evidence also in its own.

Request traffic can wrap the main ring many times over (a flood of refusals, one entry per
served request); the evidence an assessor needs to follow the system's safety decisions
(audit events and records, safety state changes, model events) must not go with it. So each
evidence entry is sealed twice: in the main store, in its place among everything else, and in
the evidence store, a separate ring that nothing else writes to, so only newer evidence ever
evicts evidence. Both are signed with the same key; `docs/log-store.md` says how to size them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from vigil.bus.closing import Closing
from vigil.nodes.logger._audit import AUDIT_EVENT
from vigil.nodes.logger._checkpoint import Signer
from vigil.nodes.logger.store import LogStore, Record, RecordRefused, StoreConfig
from vigil.schemas import AuditEvent, AuditId, ModelAnnouncement, ModelEvent, StateChange, schema_id

__all__ = ["EVIDENCE_EVENTS", "SealedStores", "evidence_config"]

# The events kept in the evidence store as well as in the main one.
EVIDENCE_EVENTS: Final = frozenset(
    {
        schema_id(AuditEvent),
        AUDIT_EVENT,
        schema_id(StateChange),
        schema_id(ModelEvent),
        schema_id(ModelAnnouncement),
    }
)
_MIB: Final = 1 << 20


def evidence_config(store: StoreConfig) -> StoreConfig:
    """The evidence store beside `store`: `NAME.evidence`, an eighth of its size (at least
    1 MiB) in at least 16 groups, the same clock, key and retention."""
    size = max(store.size_bytes // 8, _MIB)
    group = max(4096, min(store.group_bytes, size // 16) // 4096 * 4096)
    return msgspec.structs.replace(
        store, path=str(Path(store.path).with_suffix(".evidence")), size_bytes=size,
        group_bytes=group,
    )  # fmt: skip


class SealedStores(Closing):
    """The main store and the evidence store, appended to as one."""

    def __init__(self, main: LogStore, evidence: LogStore) -> None:
        self.main = main
        self.evidence = evidence
        self.stats = main.stats

    @classmethod
    def open(
        cls, main: StoreConfig, evidence: StoreConfig, *, signer: Signer | None
    ) -> SealedStores:
        """Open (or create) both stores; the first is closed again when the second fails."""
        opened = LogStore.open(main, signer=signer)
        try:
            return cls(opened, LogStore.open(evidence, signer=signer))
        except BaseException:
            opened.close()
            raise

    def stores(self) -> tuple[tuple[str, LogStore], ...]:
        """(name, store) of both stores."""
        return (("log", self.main), ("evidence", self.evidence))

    def append(self, *, node: str, event: str, payload: bytes, trace_id: bytes = b"") -> int:
        """Append one entry (to both stores when it is evidence); its main sequence number."""
        return self.append_many(((node, event, payload, trace_id),))

    def append_many(self, records: Sequence[Record]) -> int:
        """Append a burst to the main store and its evidence to the evidence store as well.

        A record the main store refuses raises there (`RecordRefused.index`), after the
        records before it are stored in both.
        """
        try:
            seq = self.main.append_many(records)
        except RecordRefused as exc:
            self._evidence(records[: exc.index])
            raise
        self._evidence(records)
        return seq

    def _evidence(self, records: Sequence[Record]) -> None:
        kept = [r for r in records if r[1] in EVIDENCE_EVENTS]
        if kept:
            self.evidence.append_many(kept)

    def audit_record(
        self, event: AuditId, *, instance: int, payload: bytes, node: str, trace_id: bytes
    ) -> Record:
        """A binary audit record for `append_many` (see `LogStore.audit_record`)."""
        return self.main.audit_record(
            event, instance=instance, payload=payload, node=node, trace_id=trace_id
        )

    def poll_timeout_ms(self) -> int | None:
        """Milliseconds until the next group commit of either store is due."""
        due = [
            t
            for t in (self.main.poll_timeout_ms(), self.evidence.poll_timeout_ms())
            if t is not None
        ]
        return min(due, default=None)

    def commit(self) -> None:
        """Make everything appended to either store durable."""
        self.main.commit()
        self.evidence.commit()

    def close(self) -> None:
        """Close both stores (cleanly, each recording its clean close); idempotent."""
        try:
            self.evidence.close()
        finally:
            self.main.close()
