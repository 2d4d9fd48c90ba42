"""Signed checkpoints: what an edit to a store looks like to verify, with and without the key."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil.nodes.logger._commit import SIDECAR_EVERY_NS
from vigil.nodes.logger._verify import ExternalCheckpoint, FaultClass, verify_image
from vigil.nodes.logger.store import (
    CheckpointError,
    LogStore,
    Signer,
    StoreConfig,
    parse_note,
)
from vigil.testing import logtamper
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic

pytestmark = pytest.mark.verifies("SR-LOG-001", "SR-LOG-002")

SIZE = 96 * 1024
CONFIG = StoreConfig(path="sim", size_bytes=SIZE, group_bytes=8192, background_commit=False)
SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEY = SIGNER.verifier()
FORGER = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))


class Store(msgspec.Struct):
    """A signed store image, the newest checkpoint note, and an older copy of the store."""

    image: bytearray
    note: bytes
    older: bytearray


def _store(entries: int = 150, *, close: bool = True) -> Store:
    """Two sessions of `entries // 2` each; the copy taken between them is `older`."""
    medium = RecordingMedium(bytes(SIZE))
    notes: list[bytes] = []
    clock, mono = SimClock(), SimMonotonic()
    older = bytearray()
    for session in range(2):
        store = LogStore.open(
            CONFIG, clock=clock, medium=medium, monotonic_ns=mono, signer=SIGNER,
            sidecar=notes.append,
        )  # fmt: skip
        for i in range(entries // 2):
            store.append(node=f"node{i % 3}", event="diag.event", payload=bytes([i % 251]) * 90)
        if session == 0:
            store.close()
            older = bytearray(medium.image)
        elif close:
            store.close()
        else:
            store.commit()
    return Store(bytearray(medium.image), notes[-1], older)


def _verify(image: bytearray, *, key: bool, note: bytes | None = None) -> tuple[str, int]:
    external = None
    if note is not None:
        checkpoint, signatures = parse_note(note)
        external = ExternalCheckpoint(
            checkpoint=checkpoint, signatures=signatures, source="checkpoint"
        )
    report = verify_image(image, key=KEY if key else None, checkpoint=external)
    return report.verdict, report.exit_code


def _edit_payload(s: Store) -> None:
    seq = logtamper.entry_spans(s.image)[10][0]
    logtamper.rewrite_payload(s.image, seq, bytes(90))


def _reseal(s: Store) -> None:
    _edit_payload(s)
    logtamper.reseal(s.image)


def _reseal_and_sign_with_another_key(s: Store) -> None:
    _reseal(s)
    logtamper.rewrite_commit(s.image, signer=FORGER)


def _cut_tail(s: Store) -> None:
    spans = logtamper.entry_spans(s.image)
    logtamper.truncate(s.image, spans[-20][0])


def _cut_tail_and_rewrite_commit(s: Store) -> None:
    _cut_tail(s)
    logtamper.rewrite_commit(s.image)


def _drop_newest_group(s: Store) -> None:
    logtamper.drop_group(s.image, -1)


def _drop_oldest_group(s: Store) -> None:
    logtamper.drop_group(s.image, 0)


def _drop_oldest_and_rewrite_start(s: Store) -> None:
    logtamper.drop_group(s.image, 0)
    logtamper.rewrite_commit(s.image, start=logtamper.entry_spans(s.image)[0][0])


def _roll_back(s: Store) -> None:
    s.image[:] = s.older


D, C, G, S = FaultClass.DIGEST, FaultClass.CHAIN, FaultClass.GAP, FaultClass.SIGNATURE
# edit -> (exit code without the key, with the key, with the key and the newest checkpoint)
TAMPER: dict[str, tuple[Callable[[Store], None], int, int, int]] = {
    "none": (lambda s: None, 0, 0, 0),
    "payload edited, seals not redone": (_edit_payload, D, D, D),
    "payload edited, chain re-sealed": (_reseal, 0, S, S),
    "re-sealed and signed with another key": (_reseal_and_sign_with_another_key, 0, S, S),
    "tail cut, metadata rewritten": (_cut_tail, G, G, G),
    "tail cut, metadata and commit record rewritten": (_cut_tail_and_rewrite_commit, 0, S, S | G),
    "newest group dropped": (_drop_newest_group, G, G, G),
    "oldest group dropped": (_drop_oldest_group, G, G, G),
    "oldest group dropped, start rewritten": (_drop_oldest_and_rewrite_start, 0, S, S),
    "rolled back to an older copy": (_roll_back, 0, 0, G),
}


@pytest.mark.parametrize("edit", list(TAMPER))
def test_every_edit_is_caught_by_the_signature_or_the_checkpoint(edit: str) -> None:
    """Without the key verify catches what breaks a seal or a recorded position; with it, a
    re-seal by anyone without the key; with the newest checkpoint kept outside the store, a
    cut or rolled-back copy too, each under its own class."""
    change, without_key, with_key, with_checkpoint = TAMPER[edit]
    store = _store()
    change(store)
    assert _verify(store.image, key=False)[1] == without_key
    assert _verify(store.image, key=True)[1] == with_key
    assert _verify(store.image, key=True, note=store.note)[1] == with_checkpoint


def test_the_store_wraps_and_verifies_clean_with_its_key() -> None:
    """A ring that reclaimed its oldest groups is told apart from deletion: the commit record
    says where history starts, and it is signed."""
    store = _store(600)
    assert logtamper.entry_spans(store.image)[0][0] > 1
    assert _verify(store.image, key=True, note=store.note) == ("clean", 0)


def test_an_unclean_store_verifies_open_with_its_key() -> None:
    """A store that was not closed (a running logger) verifies open and signed."""
    assert _verify(_store(close=False).image, key=True) == ("open", 0)


def test_a_store_without_a_key_writes_unsigned_records_that_a_key_refuses() -> None:
    """Without a signing key the commit records are unsigned: verify with a key says so."""
    medium = RecordingMedium(bytes(SIZE))
    with LogStore.open(CONFIG, clock=SimClock(), medium=medium) as store:
        store.append(node="n", event="e", payload=b"\xc0")
    report = verify_image(medium.image, key=KEY)
    assert report.exit_code == FaultClass.SIGNATURE
    assert report.signatures == "unsigned"
    assert verify_image(medium.image).exit_code == 0


def test_the_checkpoint_note_is_a_c2sp_signed_note() -> None:
    """The note carries origin, size, base64 root and a start line, then one signed-note
    signature line of the store's key; a note of something else is refused."""
    store = _store()
    body, _, signature = store.note.decode().partition("\n\n")
    lines = body.split("\n")
    assert lines[0].startswith("vigil.log/") and lines[3].startswith("start ")
    assert signature.startswith("\u2014 vigil-log ")
    checkpoint, signatures = parse_note(store.note)
    assert KEY.verify(checkpoint, signatures[0].key_id, signatures[0].signature)
    with pytest.raises(CheckpointError):
        parse_note(b"go.sum database tree\n5\nAAAA\n\n")


def test_the_sidecar_is_rewritten_at_most_once_a_second_and_at_close() -> None:
    """Back-to-back commits copy their checkpoint outside the ring once a second at most;
    closing copies the newest, which names the last entry."""
    notes: list[bytes] = []
    mono = SimMonotonic(step_ns=10_000)
    store = LogStore.open(
        CONFIG, clock=SimClock(), medium=RecordingMedium(bytes(SIZE)), monotonic_ns=mono,
        signer=SIGNER, sidecar=notes.append,
    )  # fmt: skip
    for i in range(50):
        store.append(node="n", event="diag.event", payload=bytes([i]))
        store.commit()
    assert len(notes) == 1  # the first commit's
    mono.now += SIDECAR_EVERY_NS
    store.append(node="n", event="diag.event", payload=b"later")
    store.commit()
    assert len(notes) == 2
    last = store.append(node="n", event="diag.event", payload=b"last")
    store.close()
    assert len(notes) == 3
    assert parse_note(notes[-1])[0].size == last
