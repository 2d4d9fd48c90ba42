"""Edits an attacker could make to a log store image, for the tamper tests and the tamper table.

Each edit works on a bytearray image of a store and leaves every CRC32C and SHA-256 seal
consistent where a careful forger would (`reseal` recomputes the whole chain after an edit,
the group anchors, the clean-close metadata and the commit record's chain and CRC), so what
still catches it is the part no one without the signing key can redo: the signature.
"""

from __future__ import annotations

import msgspec

from vigil.nodes.logger._checkpoint import Checkpoint, Signer
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    GROUP_HEADER_BYTES,
    SEALED_PREFIX,
    CommitRecord,
    GroupHeader,
    chain_digest,
    decode_entry_at,
    encode_commit,
    encode_group_header,
    encode_meta,
    payload_digest,
)
from vigil.nodes.logger._scan import StoreView, open_view

__all__ = [
    "drop_group",
    "entry_spans",
    "reseal",
    "rewrite_commit",
    "rewrite_payload",
    "truncate",
]

import crc32c


def entry_spans(image: bytearray) -> list[tuple[int, int, int]]:
    """(seq, start, end) of every entry of every live group, in sequence order."""
    view = open_view(image)
    spans: list[tuple[int, int, int]] = []
    for group in view.live_groups():
        header = view.header(group)
        if header is None:
            continue
        start = view.geo.group_offset(group)
        offset, seq, chain = start + GROUP_HEADER_BYTES, header.first_seq, header.anchor
        while True:
            found = decode_entry_at(image, offset, start + view.geo.group_bytes, seq, chain)
            if not isinstance(found, tuple):
                break
            entry, end = found
            spans.append((entry.seq, offset, end))
            offset, seq, chain = end, entry.seq + 1, entry.chain
    return spans


def rewrite_payload(image: bytearray, seq: int, payload: bytes) -> None:
    """Replace the payload of entry `seq` (same length) and fix its CRC32C and SHA-256; the
    chain is left broken (see `reseal`)."""
    _, start, _ = next(s for s in entry_spans(image) if s[0] == seq)
    fields = list(ENTRY_HEADER.unpack_from(image, start))
    if len(payload) != fields[8]:
        raise ValueError("the forged payload must keep the length")
    at = start + ENTRY_HEADER.size + fields[3] + fields[4]
    image[at : at + len(payload)] = payload
    fields[9] = crc32c.crc32c(payload)
    fields[10] = payload_digest(fields[6], payload)
    ENTRY_HEADER.pack_into(image, start, *fields)


def reseal(image: bytearray) -> None:
    """Recompute every chain value from the first retained entry on, then the group anchors,
    the clean-close metadata and the commit records (CRC; the signature stays as it was)."""
    view = open_view(image)
    geo = view.geo
    chains: dict[int, bytes] = {}
    prev: bytes | None = None
    for group in view.live_groups():
        header = view.header(group)
        if header is None:
            continue
        start = geo.group_offset(group)
        if prev is not None:
            image[start : start + GROUP_HEADER_BYTES] = encode_group_header(
                GroupHeader(header.epoch, header.first_seq, prev)
            )
        else:
            prev = header.anchor
        chains[header.first_seq - 1] = prev
        offset = start + GROUP_HEADER_BYTES
        end = start + geo.group_bytes
        while offset + ENTRY_HEADER.size <= end:
            fields = ENTRY_HEADER.unpack_from(image, offset)
            if fields[0] != b"VGLE" or fields[5] < header.first_seq:
                break
            names_at = offset + ENTRY_HEADER.size
            names = bytes(image[names_at : names_at + fields[3] + fields[4]])
            chain = chain_digest(prev, bytes(image[offset : offset + SEALED_PREFIX]), names)
            image[offset + SEALED_PREFIX : offset + ENTRY_HEADER.size] = chain
            chains[fields[5]] = chain
            prev = chain
            body = ENTRY_HEADER.size + fields[3] + fields[4] + fields[8]
            offset += (body + 7) & ~7
    _fix_meta(image, view, chains)
    for slot, record in enumerate(view.commits()):
        if record is not None and record.last_seq in chains:
            forged = msgspec.structs.replace(record, chain=chains[record.last_seq])
            at = geo.commit_offset(slot)
            image[at : at + len(encode_commit(forged))] = encode_commit(forged)


def _fix_meta(image: bytearray, view: StoreView, chains: dict[int, bytes]) -> None:
    geo = view.geo
    for slot, meta in enumerate(view.slots):
        if meta is None or not meta.clean or meta.last_seq not in chains:
            continue
        meta.last_chain = chains[meta.last_seq]
        at = geo.slot_offset(slot)
        image[at : at + geo.slot_bytes] = encode_meta(meta, geo.slot_bytes)


def rewrite_commit(
    image: bytearray, *, last_seq: int | None = None, start: int | None = None,
    signer: Signer | None = None,
) -> None:  # fmt: skip
    """Rewrite the newest commit record to say what the forger wants (its last seq and chain
    from the entries as they now are, its start), signed with `signer` or unsigned."""
    view = open_view(image)
    record = view.newest_commit()
    if record is None:
        raise ValueError("no commit record to rewrite")
    spans = entry_spans(image)
    seq = last_seq if last_seq is not None else spans[-1][0]
    chain = next(
        bytes(image[s + SEALED_PREFIX : s + ENTRY_HEADER.size]) for q, s, _ in spans if q == seq
    )
    group = next(g for g in view.live_groups() if _holds(view, g, seq, spans))
    end = next(e for q, _, e in spans if q == seq) - view.geo.group_offset(group)
    forged = CommitRecord(
        generation=record.generation, last_seq=seq, chain=chain, tail=(group, end),
        start=start if start is not None else record.start,
    )  # fmt: skip
    if signer is not None:
        checkpoint = Checkpoint(store_id=view.store_id, size=seq, root=chain, start=forged.start)
        forged = msgspec.structs.replace(
            forged, key_id=signer.key_id, signature=signer.sign(checkpoint)
        )
    at = view.geo.commit_offset(record.generation)
    image[at : at + len(encode_commit(forged))] = encode_commit(forged)


def _holds(view: StoreView, group: int, seq: int, spans: list[tuple[int, int, int]]) -> bool:
    start = view.geo.group_offset(group)
    return any(q == seq and start <= s < start + view.geo.group_bytes for q, s, _ in spans)


def truncate(image: bytearray, keep: int) -> None:
    """Zero every entry after seq `keep`, free the groups after its own and rewrite the
    clean-close metadata to end there."""
    view = open_view(image)
    geo = view.geo
    spans = entry_spans(image)
    for seq, start, end in spans:
        if seq > keep:
            image[start:end] = bytes(end - start)
    last = next((q, s, e) for q, s, e in spans if q == keep)
    live = view.live_groups()
    group = next(g for g in live if _holds(view, g, keep, spans))
    chain = bytes(image[last[1] + SEALED_PREFIX : last[1] + ENTRY_HEADER.size])
    for slot, meta in enumerate(view.slots):
        if meta is None:
            continue
        for later in live[live.index(group) + 1 :]:
            meta.groups["epoch"][later] = 0
        meta.last_seq, meta.last_chain = keep, chain
        meta.tail = (group, last[2] - geo.group_offset(group))
        at = geo.slot_offset(slot)
        image[at : at + geo.slot_bytes] = encode_meta(meta, geo.slot_bytes)


def drop_group(image: bytearray, which: int) -> None:
    """Free live group number `which` (0 the oldest, -1 the newest) in both metadata slots, and
    zero it; a dropped newest group moves the clean-close tail to the end of the one before."""
    view = open_view(image)
    geo = view.geo
    live = view.live_groups()
    group = live[which]
    start = geo.group_offset(group)
    image[start : start + geo.group_bytes] = bytes(geo.group_bytes)
    spans = entry_spans(image)
    for slot, meta in enumerate(view.slots):
        if meta is None:
            continue
        meta.groups["epoch"][group] = 0
        if which == -1 and meta.clean and spans:
            seq, at, end = spans[-1]
            meta.last_seq = seq
            meta.last_chain = bytes(image[at + SEALED_PREFIX : at + ENTRY_HEADER.size])
            meta.tail = (live[-2], end - geo.group_offset(live[-2]))
        slot_at = geo.slot_offset(slot)
        image[slot_at : slot_at + geo.slot_bytes] = encode_meta(meta, geo.slot_bytes)
