"""Opening a store: create it, resume a cleanly closed one at its tail, or recover after a crash.

Recovery reads what the file holds and decides where appends resume; it writes nothing but a
new store's superblock and first metadata. What it adopts from the page cache and what it
abandons it hands to the writer (`Attached.resync`, `Attached.abandon`), which makes the one
durable and zeroes the other before anything builds on them, and says so in the
`log.recovered` entry. `docs/log-store.md` states the contract.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field

from vigil.errors import IntegrityError
from vigil.nodes.logger._config import StoreConfig
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    ENTRY_MAGIC,
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    CommitRecord,
    EntryFault,
    Geometry,
    GroupHeader,
    Meta,
    StoreLayoutError,
    decode_meta,
    encode_meta,
    encode_superblock,
    genesis_chain,
    plan_geometry,
)
from vigil.nodes.logger._medium import Medium, MmapMedium
from vigil.nodes.logger._scan import StoreView, open_view
from vigil.nodes.logger._wear import WearLeveller

__all__ = ["Abandoned", "Attached", "Damaged", "attach"]


@dataclass(slots=True, frozen=True)
class Abandoned:
    """Bytes after the last intact entry that recovery zeroes before appending over them."""

    group: int
    offset: int
    length: int
    reason: str


@dataclass(slots=True, frozen=True)
class Damaged:
    """Entries a commit record names as durable that no longer verify; kept where they are."""

    first_seq: int
    last_seq: int
    reason: str


@dataclass(slots=True, kw_only=True)
class Attached:
    """What opening found: the layout, the metadata to carry on from, where appends resume.

    `group` is -1 when appends must open a fresh group first (then `pos` and `group_end` are 0).
    After a crash, `resync` is the byte range recovery adopted as it found it (the page cache
    may hold it without the disk), `abandon` what follows the last intact entry, `released`
    groups whose header never became durable (whatever landed in them is zeroed before the
    metadata frees them), `damaged` durable entries that no longer verify and `adopted` the
    entries found past the last commit record.
    """

    geo: Geometry
    store_id: bytes
    meta: Meta
    slot: int
    level: WearLeveller
    commit: CommitRecord | None
    first_seqs: dict[int, int] = field(default_factory=dict)
    group: int = -1
    pos: int = 0
    group_end: int = 0
    seq: int = 0
    chain: bytes = b""
    recovered: bool = False
    resync: tuple[int, int] | None = None
    abandon: Abandoned | None = None
    released: list[Abandoned] = field(default_factory=list)
    damaged: Damaged | None = None
    adopted: tuple[int, int] | None = None


def attach(medium: Medium, config: StoreConfig) -> Attached:
    """Open the store on `medium` (creating it when the medium holds none) and find where
    appends resume: at the clean-close tail, or after recovery."""
    page = mmap.PAGESIZE if isinstance(medium, MmapMedium) else 4096
    try:
        view = open_view(medium.image, page)
    except StoreLayoutError:
        view = _create(medium, config, page)
    meta = view.meta.copy()
    groups = meta.groups
    level = WearLeveller(
        [int(w) for w in groups["wear"]],
        [int(e) for e in groups["epoch"]],
        [bool(f & FLAG_BAD) for f in groups["flags"]],
    )
    found = Attached(
        geo=view.geo,
        store_id=view.store_id,
        meta=meta,
        slot=1 if view.slots[1] is view.meta else 0,
        level=level,
        commit=view.newest_commit(),
    )
    for group in level.live:
        header = view.header(group)
        if header is not None:
            found.first_seqs[group] = header.first_seq
    if not _resume_clean(view, found):
        _recover(view, found)
    return found


def _create(medium: Medium, config: StoreConfig, page: int) -> StoreView:
    image = medium.image
    if isinstance(medium, MmapMedium) and not medium.created and medium.size != config.size_bytes:
        # Not a store, and not the size this configuration creates: someone else's file, or
        # one left behind by an older release; never shrink the store to fit it.
        raise StoreLayoutError(
            f"{config.path} holds no log store and is {medium.size} bytes, not the configured "
            f"{config.size_bytes}: remove it or point `path` elsewhere"
        )
    geo = plan_geometry(medium.size, config.group_bytes, page)
    for slot in (0, 1):
        existing = decode_meta(
            image[geo.slot_offset(slot) : geo.slot_offset(slot) + geo.slot_bytes],
            geo.n_groups,
        )
        if existing is not None and existing.groups["epoch"].any():
            # A damaged superblock over live data: refuse rather than overwrite evidence.
            raise IntegrityError("log store superblock", "a valid superblock", "damage")
    if any(image[: geo.page]) and not any(
        decode_meta(image[o : o + geo.slot_bytes], geo.n_groups) is not None
        for o in (geo.slot_offset(0), geo.slot_offset(1))
    ):
        # A superblock page that is neither empty nor a creation cut short (whose metadata
        # slots, written first, are valid and hold no group): some other file.
        raise StoreLayoutError(f"{config.path} is not a vigil log store")
    store_id = os.urandom(16)
    meta = Meta.empty(geo.n_groups)
    meta.clean = True
    meta.last_chain = genesis_chain(store_id)
    # Both slots first, the superblock last: a crash in between leaves no superblock, and
    # the next open starts over, since nothing was stored yet.
    for slot in (0, 1):
        meta.generation = slot + 1
        medium.write(geo.slot_offset(slot), encode_meta(meta, geo.slot_bytes))
    medium.sync(geo.slot_offset(0), 2 * geo.slot_bytes)
    medium.write(0, encode_superblock(geo, store_id, time.time_ns()))
    medium.sync(0, geo.page)
    return open_view(medium.image, page)


def _resume_clean(view: StoreView, found: Attached) -> bool:
    meta = view.meta
    live = found.level.live
    if not meta.clean:
        return False
    if found.commit is not None and found.commit.last_seq > meta.last_seq:
        return False  # committed past the clean close: the metadata is not the newest state
    if not live:
        found.seq = meta.last_seq
        found.chain = meta.last_chain if meta.last_seq else genesis_chain(view.store_id)
        return True
    newest = live[-1]
    header = view.header(newest)
    if header is None or meta.tail is None or meta.tail[0] != newest:
        return False
    seq, chain, end = header.first_seq - 1, header.anchor, GROUP_HEADER_BYTES
    for item in view.walk_group(newest, header.first_seq, header.anchor, meta.tail[1]):
        if isinstance(item, EntryFault):
            return False
        seq, chain = item.seq, item.chain
    end = view.last_offset if seq >= header.first_seq else GROUP_HEADER_BYTES
    if seq != meta.last_seq or chain != meta.last_chain or end != meta.tail[1]:
        return False
    found.seq, found.chain = seq, chain
    found.group = newest
    start = view.geo.group_offset(newest)
    found.pos = start + end
    found.group_end = start + view.geo.group_bytes
    return True


def _recover(view: StoreView, found: Attached) -> None:
    # After a crash only the newest group can hold entries that are not durable: every older
    # group was synced before the next one's header was written. Appends resume in that group
    # right after its last intact entry (so a restart costs no group), once what recovery
    # adopted is durable and what it abandoned is zeroed.
    found.recovered = True
    commit = found.commit
    if commit is not None:
        found.seq, found.chain = commit.last_seq, commit.chain
    else:
        found.seq, found.chain = 0, genesis_chain(view.store_id)
    for group in reversed(found.level.live):
        header = view.header(group)
        committed_here = commit is not None and commit.tail[0] == group
        if header is None and not committed_here:
            # A header that never became durable: the group holds nothing durable, but entries
            # written after the header may have landed; zeroed, they can never lie after the
            # entries the group holds when it is taken again.
            found.level.release(group)
            found.first_seqs.pop(group, None)
            found.released.append(
                Abandoned(group, 0, view.geo.group_bytes, "group header never became durable")
            )
            continue
        _resume_in(view, found, group, header)
        return
    found.group = -1
    found.pos = found.group_end = 0


def _resume_in(view: StoreView, found: Attached, group: int, header: GroupHeader | None) -> None:
    """Walk the newest group to its last intact entry and resume there, keeping every entry a
    commit record names as durable."""
    geo = view.geo
    start = geo.group_offset(group)
    commit = found.commit
    seq, chain, end, fault = found.seq, found.chain, GROUP_HEADER_BYTES, None
    if header is not None:
        seq, chain, end, fault = _walk(view, group, header.first_seq - 1, header.anchor)
    committed = commit.last_seq if commit is not None and commit.tail[0] == group else 0
    if commit is not None and committed > seq:
        # Entries the commit record names as durable do not verify: keep them where they are
        # (verify reports them) and resume after the commit point, where the chain is known.
        reason = fault.detail if fault is not None else "missing"
        if header is None:
            reason = "group header damaged"
        found.damaged = Damaged(seq + 1, committed, reason)
        seq, chain, end, fault = _walk(view, group, committed, commit.chain, commit.tail[1])
    base = commit.last_seq if commit is not None else 0
    if seq > base:
        found.adopted = (base + 1, seq)
    found.seq, found.chain = seq, chain
    found.group = group
    found.pos = start + end
    found.group_end = start + geo.group_bytes
    found.resync = (start, start + end)
    first_seq = header.first_seq if header is not None else committed + 1
    leftover = _leftover(view, group, end, first_seq, fault)
    if leftover is not None:
        found.abandon = Abandoned(group, end, geo.group_bytes - end, leftover)


def _walk(
    view: StoreView, group: int, seq: int, chain: bytes, start_at: int = GROUP_HEADER_BYTES
) -> tuple[int, bytes, int, EntryFault | None]:
    """(last intact seq, its chain, where it ends, the fault that ended the walk if any)."""
    end, fault = start_at, None
    for item in view.walk_group(group, seq + 1, chain, start_at=start_at):
        if isinstance(item, EntryFault):
            fault = item
            break
        seq, chain, end = item.seq, item.chain, view.last_offset
    return seq, chain, end, fault


def _leftover(
    view: StoreView, group: int, end: int, first_seq: int, fault: EntryFault | None
) -> str | None:
    """Why the bytes after `end` must be zeroed before appending over them, or None.

    A torn entry, or an entry of this lap of the ring beyond a hole (a page that reached the
    disk before the one before it), would otherwise lie after entries written later; what an
    earlier lap left (lower sequence numbers) never verifies as part of this one.
    """
    if fault is not None and fault.kind != "stale":
        return f"torn entry ({fault.detail})"
    start = view.geo.group_offset(group)
    at, stop = start + end, start + view.geo.group_bytes - ENTRY_HEADER.size
    image = view.image if not isinstance(view.image, memoryview) else bytes(view.image)
    while True:
        at = image.find(ENTRY_MAGIC, at, stop)
        if at < 0:
            return None
        if (at - start) % 8 == 0:
            seq = int.from_bytes(image[at + 8 : at + 16], "little")
            if seq >= first_seq:
                return f"entry seq {seq} of this lap beyond the last intact entry"
        at += 1
