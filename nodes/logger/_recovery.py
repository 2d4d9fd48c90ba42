"""Opening a store: create it, resume a cleanly closed one at its tail, or recover after a crash.

Recovery reads what the file holds and decides where appends resume; it writes nothing but a
new store's superblock and first metadata. `docs/log-store.md` states the contract.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field

from vigil.errors import IntegrityError
from vigil.nodes.logger._config import StoreConfig
from vigil.nodes.logger._format import (
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    EntryFault,
    Geometry,
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

__all__ = ["Attached", "attach"]


@dataclass(slots=True, kw_only=True)
class Attached:
    """What opening found: the layout, the metadata to carry on from, where appends resume.

    `group` is -1 when appends must open a fresh group first (then `pos` and `group_end` are 0).
    """

    geo: Geometry
    store_id: bytes
    meta: Meta
    slot: int
    level: WearLeveller
    first_seqs: dict[int, int] = field(default_factory=dict)
    group: int = -1
    pos: int = 0
    group_end: int = 0
    seq: int = 0
    chain: bytes = b""
    recovered: bool = False


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
    )
    for group in level.live:
        header = view.header(group)
        if header is not None:
            found.first_seqs[group] = header.first_seq
    if not _resume_clean(view, found):
        _recover(view, found)
    return found


def _create(medium: Medium, config: StoreConfig, page: int) -> StoreView:
    geo = plan_geometry(medium.size, config.group_bytes, page)
    image = medium.image
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
    # After a crash only the newest group can hold a torn tail; its header carries the
    # chain anchor, so nothing older needs reading. Appends resume in a fresh group, so the
    # torn bytes (and anything after them) are never overwritten by new entries.
    found.recovered = True
    found.seq, found.chain = 0, genesis_chain(view.store_id)
    for group in reversed(found.level.live):
        header = view.header(group)
        if header is None:
            found.level.release(group)
            found.first_seqs.pop(group, None)
            continue
        found.seq, found.chain = header.first_seq - 1, header.anchor
        for item in view.walk_group(group, header.first_seq, header.anchor):
            if isinstance(item, EntryFault):
                break
            found.seq, found.chain = item.seq, item.chain
        break
    found.group = -1
    found.pos = found.group_end = 0
