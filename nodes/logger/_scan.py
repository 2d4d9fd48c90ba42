"""Walk a store image group by group and entry by entry, checking every seal; verify and read.

One walker serves the writer's recovery, `read_entries` and `verify`, so the three can never
disagree about which bytes are a committed entry.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import msgspec

from vigil.bus.ptp import ClockSource
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    ENTRY_MAGIC,
    FLAG_BAD,
    GROUP_HEADER_BYTES,
    Entry,
    EntryFault,
    Geometry,
    GroupHeader,
    Meta,
    StoreLayoutError,
    decode_entry_at,
    decode_group_header,
    decode_meta,
    decode_superblock,
    encode_meta,
    genesis_chain,
)
from vigil.nodes.logger._medium import Image

__all__ = [
    "Fault",
    "FaultClass",
    "StoreView",
    "VerifyReport",
    "iter_entries",
    "open_view",
    "verify_image",
]


class FaultClass(enum.IntFlag):
    """What verify found; the exit code of `vigil log verify` is the OR of the classes found.

    2 is left out: it is the exit code of a command-line usage error.
    """

    UNREADABLE = 1
    DIGEST = 4
    CHAIN = 8
    GAP = 16
    TIME = 32
    CLOCK = 64


_KIND_CLASS = {
    "digest": FaultClass.DIGEST,
    "format": FaultClass.DIGEST,
    "chain": FaultClass.CHAIN,
    "sequence": FaultClass.CHAIN,
    "stale": FaultClass.CHAIN,
}


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """One finding: its class, where, and what."""

    fault: str
    where: str
    detail: str
    seq: int | None = None


class VerifyReport(msgspec.Struct, kw_only=True):
    """The outcome of verifying a store.

    `ok` is false when any integrity fault was found (digest, chain, gap, time, unreadable);
    entries stamped by a fallback clock are listed under `faults` as CLOCK and set its exit bit
    unless the caller allowed the fallback, but never make `ok` false on their own.
    """

    ok: bool = True
    exit_code: int = 0
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    clean: bool = False
    bytes_verified: int = 0
    clock_sources: dict[str, int] = {}
    faults: list[Fault] = []
    notes: list[str] = []

    def add(self, cls: FaultClass, where: str, detail: str, seq: int | None = None) -> None:
        """Record a fault and fold its class into the exit code."""
        self.faults.append(
            Fault(fault=cls.name or str(int(cls)), where=where, detail=detail, seq=seq)
        )
        self.exit_code |= int(cls)
        if cls != FaultClass.CLOCK:
            self.ok = False


class StoreView:
    """A decoded superblock and metadata over an image, ready to be walked."""

    def __init__(
        self, image: Image, geo: Geometry, store_id: bytes, meta: Meta, slots: list[Meta | None]
    ) -> None:
        self.image = image
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
            if groups["epoch"][g] and not groups["flags"][g] & FLAG_BAD
        ]  # fmt: skip
        return sorted(live, key=lambda g: int(groups["epoch"][g]))

    def header(self, group: int) -> GroupHeader | None:
        """The group's header when valid and of the epoch the metadata gives it."""
        header = decode_group_header(self.image, self.geo.group_offset(group))
        if header is None or header.epoch != int(self.meta.groups["epoch"][group]):
            return None
        return header

    def walk_group(
        self, group: int, expected_seq: int, prev_chain: bytes, stop_at: int | None = None
    ) -> Iterator[Entry | EntryFault]:
        """Entries of one group in order; ends at the first non-entry, yielding its fault if any."""
        start = self.geo.group_offset(group)
        end = start + self.geo.group_bytes if stop_at is None else start + stop_at
        offset = start + GROUP_HEADER_BYTES
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


def iter_entries(view: StoreView) -> Iterator[Entry]:
    """Every entry whose seals hold, oldest group first; each group ends at its first fault."""
    meta = view.meta
    for group in view.live_groups():
        header = view.header(group)
        if header is None:
            continue
        stop = None
        if meta.clean and meta.tail is not None and meta.tail[0] == group:
            stop = meta.tail[1]
        for item in view.walk_group(group, header.first_seq, header.anchor, stop):
            if isinstance(item, EntryFault):
                break
            yield item


def verify_image(
    image: Image,
    *,
    allow_fallback_clock: bool = False,
    page_hint: int = 4096,
    on_entry: Callable[[Entry], None] | None = None,
) -> VerifyReport:
    """Check every seal, link, sequence number and timestamp of a store image.

    `on_entry` sees every entry verify accepts, in order.
    """
    report = VerifyReport()
    try:
        view = open_view(image, page_hint)
    except StoreLayoutError as exc:
        report.add(FaultClass.UNREADABLE, "superblock/metadata", str(exc))
        return report
    verifier = _Verifier(view, report, on_entry)
    verifier.run()
    verifier.summarise(allow_fallback_clock=allow_fallback_clock)
    return report


class _Verifier:
    """One walk of verify over the live groups, oldest first, one method per step of a group.

    What it carries from group to group: the sequence number and chain value the next entry
    must continue (`expected`, `prev_chain`; no chain while the previous group was unreadable),
    the last timestamp, a fault that ended the previous group's walk (`pending`: a torn tail if
    the next group continues the chain exactly there, else a fault), and the clock counts.
    """

    def __init__(
        self, view: StoreView, report: VerifyReport, on_entry: Callable[[Entry], None] | None
    ) -> None:
        self.view = view
        self.meta = view.meta
        self.report = report
        self.on_entry = on_entry
        self.live = view.live_groups()
        self.prev_chain: bytes | None = genesis_chain(view.store_id) if not self.live else None
        self.expected = self.meta.last_seq + 1 if not self.live else 0
        self.last_ts = -1
        self.pending: tuple[int, EntryFault] | None = None
        self.counts: dict[int, int] = {}

    def run(self) -> None:
        """Walk every live group: its header, its link to the previous one, its entries, and
        for the newest one how the store ends."""
        self.report.clean = self.meta.clean
        _check_slots(self.view, self.report)
        for index, group in enumerate(self.live):
            newest = index == len(self.live) - 1
            header = self.view.header(group)
            if header is None:
                if self.header_missing(group, newest):
                    break
                continue
            self.link(group, header)
            stop_at = self.tail_stop(group, newest)
            self.walk(group, header, stop_at, newest=newest)
            if newest:
                self.check_end(group, header, stop_at)
        if not self.live and self.meta.clean and self.meta.last_seq:
            self.report.add(
                FaultClass.GAP,
                "store",
                f"metadata says {self.meta.last_seq} entries, no group holds them",
            )

    def header_missing(self, group: int, newest: bool) -> bool:
        """A group whose header is unreadable: the end of an unclean store's writes (True: stop
        here), or damage, after which the chain restarts at the next readable header."""
        where = f"group {group}"
        if newest and not self.meta.clean:
            self.report.notes.append(f"{where}: newest group's header never became durable")
            return True
        self.report.add(FaultClass.DIGEST, where, "group header damaged or of the wrong epoch")
        self.prev_chain = None
        self.pending = None
        return False

    def link(self, group: int, header: GroupHeader) -> None:
        """Check that the group continues the previous one, then start the walk at its anchor."""
        report = self.report
        where = f"group {group}"
        prev_chain, expected, pending = self.prev_chain, self.expected, self.pending
        if prev_chain is not None:
            if pending is not None and (
                header.first_seq != expected or header.anchor != prev_chain
            ):
                at_group, fault = pending
                report.add(
                    _KIND_CLASS.get(fault.kind, FaultClass.DIGEST),
                    f"group {at_group}",
                    fault.detail,
                )
            if header.first_seq > expected:
                report.add(
                    FaultClass.GAP, where,
                    f"entries {expected}..{header.first_seq - 1} missing", expected,
                )  # fmt: skip
            elif header.first_seq < expected:
                report.add(
                    FaultClass.CHAIN,
                    where,
                    f"group restarts at seq {header.first_seq}, after {expected - 1}",
                )
            elif header.anchor != prev_chain:
                report.add(FaultClass.CHAIN, where, "group anchor does not continue the chain")
            elif pending is not None:
                detail = pending[1].detail
                report.notes.append(f"group {pending[0]}: tail abandoned at a crash ({detail})")
        elif report.first_seq is None:
            report.first_seq = header.first_seq
        self.pending = None
        self.expected = header.first_seq
        self.prev_chain = header.anchor

    def tail_stop(self, group: int, newest: bool) -> int | None:
        """Where the walk of this group must end: the clean-close tail of the newest group."""
        meta = self.meta
        stop_at = meta.tail[1] if newest and meta.clean and meta.tail is not None else None
        if newest and meta.clean and (meta.tail is None or meta.tail[0] != group):
            self.report.add(
                FaultClass.DIGEST, "metadata", "clean-close tail does not name the newest group"
            )
        return stop_at

    def walk(self, group: int, header: GroupHeader, stop_at: int | None, *, newest: bool) -> None:
        """Check and count every entry of the group; keep the fault that ends it, if any."""
        view = self.view
        newest_clean = newest and self.meta.clean
        view.last_offset = GROUP_HEADER_BYTES
        for item in view.walk_group(group, header.first_seq, header.anchor, stop_at):
            if isinstance(item, EntryFault):
                if item.kind != "stale" or newest_clean:
                    self.pending = (group, item)
                continue
            self.accept(group, item)

    def accept(self, group: int, item: Entry) -> None:
        """One entry whose seals and link hold: its timestamp, clock, and count."""
        report = self.report
        if item.timestamp_ns < self.last_ts:
            report.add(
                FaultClass.TIME,
                f"group {group}",
                f"timestamp goes back {self.last_ts - item.timestamp_ns} ns",
                item.seq,
            )
        self.last_ts = item.timestamp_ns
        source = int(item.clock_source)
        self.counts[source] = self.counts.get(source, 0) + 1
        report.entries += 1
        report.bytes_verified += len(item.payload)
        if self.on_entry is not None:
            self.on_entry(item)
        self.expected = item.seq + 1
        self.prev_chain = item.chain

    def check_end(self, group: int, header: GroupHeader, stop_at: int | None) -> None:
        """How the newest group ends: exactly at the clean-close tail with the recorded last
        seq and chain, or (unclean) with a tail that cannot be told from a torn write."""
        report, meta, pending = self.report, self.meta, self.pending
        where = f"group {group}"
        if meta.clean:
            if pending is not None:
                report.add(
                    _KIND_CLASS.get(pending[1].kind, FaultClass.DIGEST),
                    where,
                    pending[1].detail,
                )
            elif stop_at is not None and self.view.last_offset != stop_at:
                report.add(FaultClass.DIGEST, where, "entries end before the clean-close tail")
            elif stop_at is not None and _sealed_after(self.view, group, stop_at, header.first_seq):
                report.add(FaultClass.CHAIN, where, "an entry follows the clean-close tail")
            if self.expected - 1 != meta.last_seq:
                report.add(
                    FaultClass.GAP,
                    where,
                    f"last entry is {self.expected - 1}, metadata says {meta.last_seq}",
                )
            elif self.prev_chain != meta.last_chain:
                report.add(FaultClass.CHAIN, where, "last chain value differs from the metadata")
        elif pending is not None:
            report.notes.append(
                f"{where}: unverifiable tail after seq {self.expected - 1} (unclean shutdown)"
            )

    def summarise(self, *, allow_fallback_clock: bool) -> None:
        """The last sequence number and which clocks stamped the entries."""
        report = self.report
        report.last_seq = self.expected - 1 if report.entries else None
        clocks = {ClockSource(k).name: v for k, v in self.counts.items()}
        report.clock_sources = clocks
        fallback = {k: v for k, v in clocks.items() if k != ClockSource.PHC.name}
        if fallback:
            detail = ", ".join(
                f"{v} entries stamped by CLOCK_{k}" for k, v in sorted(fallback.items())
            )
            if allow_fallback_clock:
                report.notes.append(detail)
            else:
                report.add(FaultClass.CLOCK, "store", detail)


def _sealed_after(view: StoreView, group: int, tail: int, first_seq: int) -> bool:
    # Past a clean tail only zeros or entries of an earlier lap (seq below the group's first)
    # may lie; anything of this lap there was inserted.
    at = view.geo.group_offset(group) + tail
    if tail + ENTRY_HEADER.size > view.geo.group_bytes:
        return False
    fields = ENTRY_HEADER.unpack_from(view.image, at)
    return bool(fields[0] == ENTRY_MAGIC and fields[5] >= first_seq)


def _check_slots(view: StoreView, report: VerifyReport) -> None:
    # After a clean close both slots hold the same state one generation apart. A close cut short
    # leaves the second slot torn or still holding the older, unclean state; a bit flipped later
    # leaves a slot that differs from its expected twin in exactly one bit. The first is noted,
    # the second is a fault.
    best = view.meta
    index = 0 if view.slots[0] is best else 1
    twin = view.slots[1 - index]
    if not best.clean:
        if twin is None:
            report.notes.append("one metadata slot is torn (unclean shutdown)")
        return
    if twin is not None and not twin.clean and twin.generation < best.generation:
        report.notes.append("the clean close was cut short before its second metadata write")
        return
    if twin is not None:
        same = (
            twin.clean
            and abs(twin.generation - best.generation) == 1
            and twin.last_seq == best.last_seq
            and twin.last_chain == best.last_chain
            and twin.tail == best.tail
            and twin.groups.tobytes() == best.groups.tobytes()
        )
        if not same:
            report.add(FaultClass.DIGEST, "metadata", "the two metadata slots disagree")
        return
    geo = view.geo
    at = geo.slot_offset(1 - index)
    actual = int.from_bytes(bytes(view.image[at : at + geo.slot_bytes]), "little")
    for generation in (best.generation - 1, best.generation + 1):
        expected = best.copy()
        expected.generation = generation
        raw = int.from_bytes(encode_meta(expected, geo.slot_bytes), "little")
        if (raw ^ actual).bit_count() <= 1:
            report.add(FaultClass.DIGEST, "metadata", f"metadata slot {1 - index} is damaged")
            return
    report.notes.append("the clean close was cut short in its second metadata write")
