"""A store image decoded for walking: superblock, metadata, commit records, group by group.

One walker serves the writer's recovery and verify (which `read_entries` follows), so they
can never disagree about which bytes are an entry.
"""

from __future__ import annotations

from collections.abc import Iterator

from vigil.nodes.logger._format import (
    COMMIT_RECORD_BYTES,
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    CommitRecord,
    Entry,
    EntryFault,
    Geometry,
    GroupHeader,
    Meta,
    StoreLayoutError,
    decode_commit,
    decode_entry_at,
    decode_group_header,
    decode_meta,
    decode_superblock,
)
from vigil.nodes.logger._medium import Image

__all__ = ["StoreView", "open_view"]


class StoreView:
    """A decoded superblock and metadata over an image, ready to be walked."""

    def __init__(
        self, image: Image, geo: Geometry, store_id: bytes, meta: Meta, slots: list[Meta | None]
    ) -> None:
        self.image = image
        # Groups to treat as free although the metadata names them (reclaimed while a live
        # store was being read).
        self.reclaimed: frozenset[int] = frozenset()
        self.geo = geo
        self.store_id = store_id
        self.meta = meta
        self.slots = slots
        # End of the last entry `walk_group` decoded, relative to the group's start.
        self.last_offset = GROUP_HEADER_BYTES

    def live_groups(self) -> list[int]:
        """Groups holding retained data, oldest first."""
        groups = self.meta.groups
        live = [
            g for g in range(len(groups))
            if groups["epoch"][g] and not groups["flags"][g] & FLAG_BAD and g not in self.reclaimed
        ]  # fmt: skip
        return sorted(live, key=lambda g: int(groups["epoch"][g]))

    def header(self, group: int) -> GroupHeader | None:
        """The group's header when valid and of the epoch the metadata gives it."""
        header = decode_group_header(self.image, self.geo.group_offset(group))
        if header is None or header.epoch != int(self.meta.groups["epoch"][group]):
            return None
        return header

    def walk_group(
        self,
        group: int,
        expected_seq: int,
        prev_chain: bytes,
        stop_at: int | None = None,
        *,
        start_at: int = GROUP_HEADER_BYTES,
    ) -> Iterator[Entry | EntryFault]:
        """Entries of one group in order from `start_at` (relative to the group); ends at the
        first non-entry, yielding its fault if any. `last_offset` follows the last entry."""
        start = self.geo.group_offset(group)
        end = start + self.geo.group_bytes if stop_at is None else start + stop_at
        offset = start + start_at
        self.last_offset = start_at
        while offset < end:
            result = decode_entry_at(self.image, offset, end, expected_seq, prev_chain)
            if result is None:
                return
            if isinstance(result, EntryFault):
                yield result
                return
            entry, offset = result
            self.last_offset = offset - start
            yield entry
            expected_seq = entry.seq + 1
            prev_chain = entry.chain

    def commits(self) -> list[CommitRecord | None]:
        """Every commit record slot: its record, or None where none is readable."""
        geo = self.geo
        return [decode_commit(self.image, geo.commit_offset(i)) for i in range(geo.commit_slots)]

    def damaged_commit_slots(self) -> list[int]:
        """Slots that hold neither zeros nor a sealed commit record (a record is one disk
        sector, written whole, so a cut leaves either the old or the new one)."""
        geo, image = self.geo, self.image
        bad = []
        for slot, record in enumerate(self.commits()):
            at = geo.commit_offset(slot)
            if record is None and any(image[at : at + COMMIT_RECORD_BYTES]):
                bad.append(slot)
        return bad

    def newest_commit(self) -> CommitRecord | None:
        """The commit record of the highest generation whose seal holds, if any."""
        found = (c for c in self.commits() if c is not None)
        return max(found, key=lambda c: c.generation, default=None)


def open_view(image: Image, page_hint: int = 4096) -> StoreView:
    """Decode superblock and metadata; StoreLayoutError when neither metadata slot is valid."""
    geo, store_id, _ = decode_superblock(image, page_hint)
    if len(image) < geo.size:
        raise StoreLayoutError(f"file is {len(image)} bytes, the superblock says {geo.size}")
    slots = [
        decode_meta(image[geo.slot_offset(i) : geo.slot_offset(i) + geo.slot_bytes], geo.n_groups)
        for i in (0, 1)
    ]
    valid = [m for m in slots if m is not None]
    if not valid:
        raise StoreLayoutError("both metadata slots are damaged")
    meta = max(valid, key=lambda m: m.generation)
    return StoreView(image, geo, store_id, meta, slots)
