"""The on-disk layout of the sealed log store: superblock, metadata slots, group headers, entries.

Every multi-byte field is little-endian. `docs/log-store.md` is the prose version of this file;
the two change together.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

import crc32c
import msgspec
import numpy as np

from vigil.bus.ptp import ClockSource
from vigil.errors import VigilError
from vigil.nodes.logger._medium import Image

__all__ = [
    "COMMIT_FIXED",
    "COMMIT_MAGIC",
    "COMMIT_RECORD_BYTES",
    "ENTRY_HEADER",
    "ENTRY_MAGIC",
    "ENTRY_VERSION",
    "GROUP_DTYPE",
    "GROUP_HEADER",
    "GROUP_MAGIC",
    "MAX_NAME_BYTES",
    "META_FIXED",
    "META_MAGIC",
    "NO_TAIL",
    "SEALED_PREFIX",
    "SUPERBLOCK",
    "SUPER_MAGIC",
    "CommitRecord",
    "Entry",
    "EntryFault",
    "EntryTooLarge",
    "Geometry",
    "GroupHeader",
    "Meta",
    "RecordRefused",
    "StoreLayoutError",
    "align8",
    "chain_digest",
    "decode_commit",
    "decode_entry_at",
    "decode_group_header",
    "decode_meta",
    "decode_superblock",
    "encode_commit",
    "encode_entry",
    "encode_group_header",
    "encode_meta",
    "encode_superblock",
    "genesis_chain",
    "payload_digest",
    "plan_geometry",
]

# Version 2 added the commit record area (and so moved the groups).
FORMAT_VERSION: Final = 2

SUPER_MAGIC: Final = b"VIGILLOG"
# magic, version, page, size, group_bytes, n_groups, slot_bytes, data_start, store_id, created_ns
SUPERBLOCK: Final = struct.Struct("<8sIIQQIIQ16sQ")

META_MAGIC: Final = b"VGLMETA1"
# magic, generation, clean, n_groups, last_seq, last_chain, tail_group, tail_offset
META_FIXED: Final = struct.Struct("<8sQIIQ32sII")
_META_TABLE_AT: Final = 128
NO_TAIL: Final = 0xFFFFFFFF
GROUP_DTYPE: Final = np.dtype([("wear", "<u4"), ("flags", "<u4"), ("epoch", "<u8")])
FLAG_BAD: Final = 1

COMMIT_MAGIC: Final = b"VGLCOMIT"
# magic, generation, last_seq, chain, tail_group, tail_offset, start_seq, key_id, sig_len
COMMIT_FIXED: Final = struct.Struct("<8sQQ32sIIQ4sH")
COMMIT_RECORD_BYTES: Final = 512
_COMMIT_SIG_AT: Final = 80
COMMIT_PAGES: Final = 2

GROUP_MAGIC: Final = b"VGLG"
# magic, version, epoch, first_seq, anchor (chain before first_seq), 4 zero bytes, crc32c
GROUP_HEADER: Final = struct.Struct("<4sIQQ32s4xI")
GROUP_HEADER_BYTES: Final = 64

ENTRY_MAGIC: Final = b"VGLE"
ENTRY_VERSION: Final = 1
# magic, version, clock, node_len, event_len, seq, timestamp_ns, trace_id, payload_len,
# crc32c(payload), sha256(ts || payload), chain
ENTRY_HEADER: Final = struct.Struct("<4sBBBBQQ16sII32s32s")
# The chain covers the header up to (not including) the chain field, then the names.
SEALED_PREFIX: Final = ENTRY_HEADER.size - 32
MAX_NAME_BYTES: Final = 255
_TS: Final = struct.Struct("<Q")
_ZERO_TRACE: Final = bytes(16)


class StoreLayoutError(VigilError):
    """The store's geometry or configuration cannot be laid out; says why."""


class RecordRefused(VigilError, ValueError):
    """A record the store cannot seal as it is; `index` is its place in the burst.

    The records before it in the same burst are stored; nothing after it is.
    """

    def __init__(self, reason: str, index: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


class EntryTooLarge(RecordRefused):
    """An entry does not fit one page group."""

    def __init__(self, size: int, limit: int, index: int = 0) -> None:
        super().__init__(
            f"entry of {size} bytes exceeds the group capacity of {limit} bytes", index
        )
        self.size = size
        self.limit = limit


def align8(n: int) -> int:
    """`n` rounded up to a multiple of 8 (entries start 8-byte aligned)."""
    return (n + 7) & ~7


class Geometry(msgspec.Struct, frozen=True, kw_only=True):
    """Where everything lives in the file; fixed when the store is created."""

    page: int
    size: int
    group_bytes: int
    n_groups: int
    slot_bytes: int
    data_start: int

    @property
    def commit_at(self) -> int:
        """File offset of the commit record area (after both metadata slots)."""
        return self.page + 2 * self.slot_bytes

    @property
    def commit_slots(self) -> int:
        """Commit records the area holds; they are written round-robin."""
        return COMMIT_PAGES * self.page // COMMIT_RECORD_BYTES

    def commit_offset(self, generation: int) -> int:
        """File offset of the commit record slot that generation `generation` is written to."""
        return self.commit_at + (generation % self.commit_slots) * COMMIT_RECORD_BYTES

    def group_offset(self, group: int) -> int:
        """File offset of a group's first byte."""
        return self.data_start + group * self.group_bytes

    def slot_offset(self, slot: int) -> int:
        """File offset of metadata slot 0 or 1."""
        return self.page + slot * self.slot_bytes


def plan_geometry(size: int, group_bytes: int, page: int) -> Geometry:
    """Lay out a store of `size` bytes in groups of `group_bytes`; StoreLayoutError if it can't."""
    if group_bytes <= 0 or group_bytes % page:
        raise StoreLayoutError(f"group_bytes {group_bytes} is not a multiple of the page {page}")
    n = size // group_bytes
    while n > 0:
        slot = -(-(_META_TABLE_AT + GROUP_DTYPE.itemsize * n + 4) // page) * page
        data_start = page + 2 * slot + COMMIT_PAGES * page
        fits = (size - data_start) // group_bytes
        if fits >= n:
            break
        n = fits
    if n < 2:
        raise StoreLayoutError(f"{size} bytes hold fewer than 2 groups of {group_bytes} bytes")
    return Geometry(
        page=page, size=size, group_bytes=group_bytes, n_groups=n, slot_bytes=slot,
        data_start=data_start,
    )  # fmt: skip


def _seal_crc(block: Image) -> int:
    # Superblock and metadata slots end in a CRC32C of every byte before it, padding included,
    # so that no bit of them is unchecked.
    return int(crc32c.crc32c(block[:-4]))


def encode_superblock(geo: Geometry, store_id: bytes, created_ns: int) -> bytes:
    """The first page of the file."""
    page = bytearray(geo.page)
    SUPERBLOCK.pack_into(
        page, 0, SUPER_MAGIC, FORMAT_VERSION, geo.page, geo.size, geo.group_bytes,
        geo.n_groups, geo.slot_bytes, geo.data_start, store_id, created_ns,
    )  # fmt: skip
    struct.pack_into("<I", page, geo.page - 4, _seal_crc(page))
    return bytes(page)


def decode_superblock(buf: Image, page_hint: int) -> tuple[Geometry, bytes, int]:
    """(geometry, store id, creation time) of a superblock; StoreLayoutError when invalid."""
    if len(buf) < SUPERBLOCK.size:
        raise StoreLayoutError("file too short for a superblock")
    magic, version, page, size, gbytes, n, slot, data_start, store_id, created = (
        SUPERBLOCK.unpack_from(buf, 0)
    )
    if magic != SUPER_MAGIC:
        raise StoreLayoutError("not a vigil log store (bad magic)")
    if version != FORMAT_VERSION:
        raise StoreLayoutError(f"unsupported store version {version}")
    if page not in (page_hint, 4096, 16384, 65536) or len(buf) < page:
        raise StoreLayoutError(f"implausible page size {page}")
    (crc,) = struct.unpack_from("<I", buf, page - 4)
    if crc != _seal_crc(buf[:page]):
        raise StoreLayoutError("superblock CRC32C mismatch")
    geo = Geometry(
        page=page, size=size, group_bytes=gbytes, n_groups=n, slot_bytes=slot,
        data_start=data_start,
    )  # fmt: skip
    if geo != plan_geometry(size, gbytes, page):
        raise StoreLayoutError("superblock geometry is inconsistent")
    return geo, bytes(store_id), created


class Meta:
    """One metadata slot: the group table (wear, flags, epoch) and the clean-close record."""

    __slots__ = ("clean", "generation", "groups", "last_chain", "last_seq", "tail")

    def __init__(
        self,
        generation: int,
        groups: np.ndarray,
        *,
        clean: bool = False,
        last_seq: int = 0,
        last_chain: bytes = bytes(32),
        tail: tuple[int, int] | None = None,
    ) -> None:
        self.generation = generation
        self.groups = groups
        self.clean = clean
        self.last_seq = last_seq
        self.last_chain = last_chain
        self.tail = tail

    @classmethod
    def empty(cls, n_groups: int) -> Meta:
        """Generation 0, every group free and unworn."""
        return cls(0, np.zeros(n_groups, dtype=GROUP_DTYPE))

    def copy(self) -> Meta:
        """A deep copy (the group table is copied)."""
        return Meta(
            self.generation, self.groups.copy(), clean=self.clean, last_seq=self.last_seq,
            last_chain=self.last_chain, tail=self.tail,
        )  # fmt: skip


def encode_meta(meta: Meta, slot_bytes: int) -> bytes:
    """One metadata slot image."""
    block = bytearray(slot_bytes)
    tail_group, tail_offset = meta.tail if meta.tail is not None else (NO_TAIL, 0)
    META_FIXED.pack_into(
        block, 0, META_MAGIC, meta.generation, int(meta.clean), len(meta.groups),
        meta.last_seq, meta.last_chain, tail_group, tail_offset,
    )  # fmt: skip
    table = meta.groups.tobytes()
    block[_META_TABLE_AT : _META_TABLE_AT + len(table)] = table
    struct.pack_into("<I", block, slot_bytes - 4, _seal_crc(block))
    return bytes(block)


def decode_meta(buf: Image, n_groups: int) -> Meta | None:
    """The slot's content, or None when its magic, size or CRC32C is wrong (torn or never set)."""
    magic, gen, clean, n, last_seq, last_chain, tail_group, tail_offset = META_FIXED.unpack_from(
        buf, 0
    )
    if magic != META_MAGIC or n != n_groups or clean not in (0, 1):
        return None
    (crc,) = struct.unpack_from("<I", buf, len(buf) - 4)
    if crc != _seal_crc(buf):
        return None
    end = _META_TABLE_AT + GROUP_DTYPE.itemsize * n
    groups = np.frombuffer(bytes(buf[_META_TABLE_AT:end]), dtype=GROUP_DTYPE).copy()
    tail = None if tail_group == NO_TAIL else (int(tail_group), int(tail_offset))
    return Meta(
        gen, groups, clean=bool(clean), last_seq=last_seq, last_chain=bytes(last_chain), tail=tail
    )


class CommitRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A commit point: every entry up to `last_seq` is durable, and history starts at `start`.

    Written after the msync that made those entries durable (never with it), so a record on
    disk proves what it names. `chain` is the chain value of entry `last_seq`; `tail` is where
    that entry ends (group, offset in the group; group NO_TAIL before the first group). With a
    signing key, `signature` is the Ed25519 signature of the checkpoint note of (store id,
    last_seq, chain, start) and `key_id` the signed-note key hash (`_checkpoint`).
    """

    generation: int
    last_seq: int
    chain: bytes
    tail: tuple[int, int]
    start: int
    key_id: bytes = bytes(4)
    signature: bytes = b""


def encode_commit(record: CommitRecord) -> bytes:
    """The 512-byte commit record, CRC32C-sealed."""
    block = bytearray(COMMIT_RECORD_BYTES)
    COMMIT_FIXED.pack_into(
        block, 0, COMMIT_MAGIC, record.generation, record.last_seq, record.chain,
        record.tail[0], record.tail[1], record.start, record.key_id, len(record.signature),
    )  # fmt: skip
    block[_COMMIT_SIG_AT : _COMMIT_SIG_AT + len(record.signature)] = record.signature
    struct.pack_into("<I", block, COMMIT_RECORD_BYTES - 4, _seal_crc(block))
    return bytes(block)


def decode_commit(buf: Image, offset: int) -> CommitRecord | None:
    """The commit record at `offset`, or None when none was written there (or it is torn)."""
    block = buf[offset : offset + COMMIT_RECORD_BYTES]
    magic, generation, last_seq, chain, group, tail, start, key_id, sig_len = (
        COMMIT_FIXED.unpack_from(block, 0)
    )
    if magic != COMMIT_MAGIC or sig_len > 64:
        return None
    (crc,) = struct.unpack_from("<I", block, COMMIT_RECORD_BYTES - 4)
    if crc != _seal_crc(block):
        return None
    return CommitRecord(
        generation=generation, last_seq=last_seq, chain=bytes(chain), tail=(group, tail),
        start=start, key_id=bytes(key_id),
        signature=bytes(block[_COMMIT_SIG_AT : _COMMIT_SIG_AT + sig_len]),
    )  # fmt: skip


class GroupHeader(msgspec.Struct, frozen=True):
    """The first 64 bytes of a live group: its epoch and the chain anchor it continues."""

    epoch: int
    first_seq: int
    anchor: bytes


def encode_group_header(header: GroupHeader) -> bytes:
    """The 64-byte group header, CRC32C-sealed."""
    raw = GROUP_HEADER.pack(
        GROUP_MAGIC, FORMAT_VERSION, header.epoch, header.first_seq, header.anchor, 0
    )
    return raw[:-4] + struct.pack("<I", crc32c.crc32c(raw[:-4]))


def decode_group_header(buf: Image, offset: int) -> GroupHeader | None:
    """The header at `offset`, or None when it is not a valid group header."""
    magic, version, epoch, first_seq, anchor, crc = GROUP_HEADER.unpack_from(buf, offset)
    if magic != GROUP_MAGIC or version != FORMAT_VERSION:
        return None
    if crc != crc32c.crc32c(buf[offset : offset + GROUP_HEADER.size - 4]):
        return None
    return GroupHeader(epoch, first_seq, bytes(anchor))


def genesis_chain(store_id: bytes) -> bytes:
    """The chain value before entry 1: binds the chain to this store."""
    return hashlib.sha256(b"vigil-log-genesis\0" + store_id).digest()


def payload_digest(timestamp_ns: int, payload: bytes) -> bytes:
    """SHA-256(u64le(timestamp_ns) || payload)."""
    return hashlib.sha256(_TS.pack(timestamp_ns) + payload).digest()


def chain_digest(prev_chain: bytes, sealed_prefix: bytes, names: bytes) -> bytes:
    """SHA-256(previous chain || header without its chain field || node || event)."""
    return hashlib.sha256(prev_chain + sealed_prefix + names).digest()


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One sealed entry as read back from the store."""

    seq: int
    timestamp_ns: int
    clock_source: ClockSource
    node: str
    event: str
    trace_id: bytes
    payload: bytes
    chain: bytes


# implements: SR-LOG-001
def encode_entry(
    *,
    seq: int,
    timestamp_ns: int,
    clock_source: int,
    node: bytes,
    event: bytes,
    trace_id: bytes,
    payload: bytes,
    prev_chain: bytes,
) -> tuple[bytes, bytes]:
    """(entry bytes padded to 8, its chain value); the reference the store's hot path matches."""
    if len(node) > MAX_NAME_BYTES or len(event) > MAX_NAME_BYTES:
        raise ValueError("node and event names are limited to 255 UTF-8 bytes")
    if trace_id and len(trace_id) != 16:
        raise ValueError("trace_id is 16 bytes or empty")
    prefix = ENTRY_HEADER.pack(
        ENTRY_MAGIC, ENTRY_VERSION, clock_source, len(node), len(event), seq, timestamp_ns,
        trace_id or _ZERO_TRACE, len(payload), crc32c.crc32c(payload),
        payload_digest(timestamp_ns, payload), b"",
    )[:SEALED_PREFIX]  # fmt: skip
    names = node + event
    chain = chain_digest(prev_chain, prefix, names)
    body = prefix + chain + names + payload
    return body + bytes(align8(len(body)) - len(body)), chain


class EntryFault(msgspec.Struct, frozen=True):
    """Why bytes at an offset are not the expected entry."""

    kind: str
    detail: str


def decode_entry_at(
    buf: Image, offset: int, end: int, expected_seq: int | None, prev_chain: bytes | None
) -> tuple[Entry, int] | EntryFault | None:
    """Decode and check the entry at `offset` (the group ends at `end`).

    Returns (entry, next offset); None when no entry starts there (no magic: end of the group's
    entries); or an EntryFault saying which seal or field failed. With `prev_chain` None the
    link to the predecessor is not checked, with `expected_seq` None the sequence number is
    not: what a walk resuming after damage knows.
    """
    if offset + ENTRY_HEADER.size > end:
        return None
    (magic, version, clock, node_len, event_len, seq, ts, trace, plen, crc, digest, chain) = (
        ENTRY_HEADER.unpack_from(buf, offset)
    )
    if magic != ENTRY_MAGIC:
        return None
    body_end = offset + ENTRY_HEADER.size + node_len + event_len + plen
    next_offset = align8(body_end)
    if version != ENTRY_VERSION:
        return EntryFault("format", f"unknown entry version {version}")
    if next_offset > end:
        return EntryFault("format", f"length {plen} runs past the group end")
    names_at = offset + ENTRY_HEADER.size
    payload_at = names_at + node_len + event_len
    payload = bytes(buf[payload_at:body_end])
    if crc32c.crc32c(payload) != crc:
        return EntryFault("digest", f"seq {seq}: payload CRC32C mismatch")
    if payload_digest(ts, payload) != digest:
        return EntryFault("digest", f"seq {seq}: SHA-256(timestamp||payload) mismatch")
    names = bytes(buf[names_at:payload_at])
    if prev_chain is None or expected_seq is None:
        if expected_seq is not None and seq != expected_seq:
            return EntryFault("sequence", f"found seq {seq} where {expected_seq} was due")
    elif chain_digest(prev_chain, bytes(buf[offset : offset + SEALED_PREFIX]), names) != chain:
        if seq < expected_seq:
            # Sealed but from an earlier lap of the ring: what lies past a group's last entry.
            return EntryFault(
                "stale", f"seq {seq} from an earlier lap where {expected_seq} was due"
            )
        if seq != expected_seq:
            return EntryFault("sequence", f"found seq {seq} where {expected_seq} was due")
        return EntryFault("chain", f"seq {seq}: chain digest does not link to its predecessor")
    elif seq != expected_seq:
        return EntryFault("sequence", f"found seq {seq} where {expected_seq} was due")
    if any(buf[body_end:next_offset]):
        return EntryFault("digest", f"seq {seq}: non-zero padding")
    try:
        source = ClockSource(clock)
        node = names[:node_len].decode()
        event = names[node_len:].decode()
    except ValueError as exc:
        return EntryFault("format", f"seq {seq}: {exc}")
    entry = Entry(
        seq=seq, timestamp_ns=ts, clock_source=source, node=node, event=event,
        trace_id=b"" if trace == _ZERO_TRACE else bytes(trace), payload=payload,
        chain=bytes(chain),
    )  # fmt: skip
    return entry, next_offset
