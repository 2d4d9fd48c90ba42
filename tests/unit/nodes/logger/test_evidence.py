"""Safety evidence survives any flood of request traffic: it is kept in its own ring as well."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil.nodes.logger._evidence import EVIDENCE_EVENTS, SealedStores, evidence_config
from vigil.nodes.logger.store import Signer, StoreConfig, read_entries, verify_store
from vigil.schemas import AuditEvent, AuditId, SafetyState, StateChange, schema_id

pytestmark = pytest.mark.verifies("SR-LOG-003")

SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def test_a_flood_that_wraps_the_ring_leaves_every_safety_entry_readable(tmp_path: Path) -> None:
    """Ordinary entries that wrap the main ring many times over evict the early audit and
    state entries there, never from the evidence store: every one is still readable there,
    and both stores verify with the key."""
    main = StoreConfig(path=str(tmp_path / "log.store"), size_bytes=256 * 1024, group_bytes=16384)
    evidence = evidence_config(main)
    assert Path(evidence.path).name == "log.evidence"
    safety: list[bytes] = []
    flood = [("ingest", "diag.event", bytes(300), b"")] * 200
    with SealedStores.open(main, evidence, signer=SIGNER) as stores:
        for round_ in range(60):
            audit = msgspec.msgpack.encode(
                AuditEvent(event=AuditId.NODE_STARTED, node="loader", detail=f"round {round_}")
            )
            state = msgspec.msgpack.encode(
                StateChange(
                    state=SafetyState.DEGRADED,
                    previous=SafetyState.NORMAL,
                    cause=f"round {round_}",
                    since_ns=round_,
                )
            )
            safety += [audit, state]
            stores.append_many(
                [
                    ("loader", schema_id(AuditEvent), audit, b""),
                    *flood,
                    ("watchdog", schema_id(StateChange), state, b""),
                ]
            )
        wrapped = stores.main.stats.oldest_seq
    main_payloads = {e.payload for e in read_entries(main.path) if e.event in EVIDENCE_EVENTS}
    # 60 rounds of 200 entries of ~420 bytes: the 256 KiB ring went round about 18 times.
    assert wrapped > 10_000
    assert safety[0] not in main_payloads
    kept = [e.payload for e in read_entries(evidence.path) if e.event in EVIDENCE_EVENTS]
    assert kept == safety
    key = SIGNER.verifier()
    assert verify_store(main.path, key=key).ok
    assert verify_store(evidence.path, key=key).ok
