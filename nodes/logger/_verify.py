"""Verify a store image: every seal, link, sequence number and timestamp, the commit records and
the signed checkpoints; and say what the image is: clean, open, torn or damaged.

The same walk yields the entries `read_entries` returns, so reading and verifying can never
disagree about which bytes are an entry. `docs/log-store.md` states the rules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import msgspec

from vigil.bus.ptp import ClockSource
from vigil.nodes.logger._checkpoint import Checkpoint, NoteSignature, Verifier
from vigil.nodes.logger._format import (
    ENTRY_HEADER,
    ENTRY_MAGIC,
    GROUP_HEADER_BYTES,
    CommitRecord,
    Entry,
    EntryFault,
    GroupHeader,
    StoreLayoutError,
    align8,
    decode_entry_at,
    encode_meta,
    genesis_chain,
)
from vigil.nodes.logger._medium import Image
from vigil.nodes.logger._scan import StoreView, open_view

__all__ = [
    "ExternalCheckpoint",
    "Fault",
    "FaultClass",
    "Verdict",
    "VerifyReport",
    "iter_entries",
    "verify_image",
    "verify_view",
]


class FaultClass(enum.IntFlag):
    """What verify found; the exit code of `vigil log verify` is the OR of the classes found.

    CLOCK is time quality, not integrity: entries stamped by a fallback clock that the store
    recorded. 2 is left out: it is the exit code of a command-line usage error.
    """

    UNREADABLE = 1
    DIGEST = 4
    CHAIN = 8
    GAP = 16
    TIME = 32
    CLOCK = 64
    SIGNATURE = 128


class Verdict(enum.StrEnum):
    """What the image is, as a whole."""

    CLEAN = "clean"  # closed cleanly; every entry verified to the recorded tail
    OPEN = "open"  # not closed cleanly (running, or stopped by a crash); nothing torn
    TORN = "torn"  # not closed cleanly; bytes after the last durable entry were torn
    DAMAGED = "damaged"  # an integrity fault
    UNREADABLE = "unreadable"  # not a store, or its superblock and metadata are unusable


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


class ExternalCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint kept outside the store (sidecar file, bus recorder), with where it came from."""

    checkpoint: Checkpoint
    signatures: list[NoteSignature]
    source: str


class VerifyReport(msgspec.Struct, kw_only=True):
    """The outcome of verifying a store.

    `ok` is false when any integrity fault was found (every class but CLOCK). `durable_seq` is
    the last entry the newest commit record names as durable; in a store that was not closed
    cleanly, `torn_after` is set when bytes after it were torn (left out, not a fault).
    `time_quality` says which clocks stamped the entries; with fallback-clock entries the CLOCK
    bit is set unless the caller allowed them, and `ok` stays true.
    """

    ok: bool = True
    exit_code: int = 0
    verdict: str = ""
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    clean: bool = False
    durable_seq: int | None = None
    history_start: int | None = None
    torn_after: int | None = None
    bytes_verified: int = 0
    clock_sources: dict[str, int] = {}
    time_quality: str = ""
    signatures: str = ""
    key_id: str = ""
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


def verify_image(
    image: Image,
    *,
    allow_fallback_clock: bool = False,
    page_hint: int = 4096,
    on_entry: Callable[[Entry], None] | None = None,
    key: Verifier | None = None,
    checkpoint: ExternalCheckpoint | None = None,
) -> VerifyReport:
    """Check every seal, link, sequence number and timestamp of a store image, its commit
    records and, with `key`, their signatures; with `checkpoint`, that the store still holds
    what that checkpoint says it held.

    `on_entry` sees every entry verify accepts, in order.
    """
    try:
        view = open_view(image, page_hint)
    except StoreLayoutError as exc:
        report = VerifyReport()
        report.add(FaultClass.UNREADABLE, "superblock/metadata", str(exc))
        report.verdict = Verdict.UNREADABLE
        return report
    return verify_view(
        view, allow_fallback_clock=allow_fallback_clock, on_entry=on_entry, key=key,
        checkpoint=checkpoint,
    )  # fmt: skip


def verify_view(
    view: StoreView,
    *,
    allow_fallback_clock: bool = False,
    on_entry: Callable[[Entry], None] | None = None,
    key: Verifier | None = None,
    checkpoint: ExternalCheckpoint | None = None,
) -> VerifyReport:
    """`verify_image` over a view already opened (a snapshot of a live store, for instance)."""
    report = VerifyReport()
    verifier = _Verifier(view, report, key=key, checkpoint=checkpoint)
    for entry in verifier.entries():
        if on_entry is not None:
            on_entry(entry)
    verifier.summarise(allow_fallback_clock=allow_fallback_clock)
    return report


def iter_entries(view: StoreView) -> Iterator[Entry]:
    """Every entry verify accepts, oldest first."""
    return _Verifier(view, VerifyReport(), key=None, checkpoint=None).entries()


class _Verifier:
    """One walk of verify over the live groups, oldest first, one method per step of a group.

    What it carries from group to group: the sequence number and chain value the next entry
    must continue (`expected`, `prev_chain`; no chain while the previous group was
    unreadable), the last timestamp and clock counts, how far damage reported so far reaches,
    and the chain values seen at the sequence numbers a commit record or checkpoint names.
    """

    def __init__(
        self,
        view: StoreView,
        report: VerifyReport,
        *,
        key: Verifier | None,
        checkpoint: ExternalCheckpoint | None,
    ) -> None:
        self.view = view
        self.image = view.image if not isinstance(view.image, memoryview) else bytes(view.image)
        self.meta = view.meta
        self.report = report
        self.key = key
        self.external = checkpoint
        self.live = view.live_groups()
        self.commit: CommitRecord | None = view.newest_commit()
        self.durable = self.commit.last_seq if self.commit is not None else 0
        self.prev_chain: bytes | None = genesis_chain(view.store_id) if not self.live else None
        self.expected = self.meta.last_seq + 1 if not self.live else 0
        self.last_ts = -1
        self.last_seq = 0
        self.reached = 0  # the highest seq accepted or reported damaged
        self.counts: dict[int, int] = {}
        # Damage whose end the walk of its group did not find: (fault index, first seq); the
        # next group's header says where it ends.
        self.unresolved: tuple[int, int] | None = None
        # seq -> chain value the walk found there, for the seqs commit records/checkpoints name
        self.wanted: dict[int, bytes | None] = {}
        if self.commit is not None:
            self.wanted[self.commit.last_seq] = None
        if checkpoint is not None:
            self.wanted[checkpoint.checkpoint.size] = None

    # -- the walk --------------------------------------------------------------------------

    def entries(self) -> Iterator[Entry]:
        """Walk every live group: its header, its link to the previous one, its entries, and
        for the newest one how the store ends; yields each entry accepted."""
        report, meta = self.report, self.meta
        report.clean = meta.clean
        _check_slots(self.view, report)
        for slot in self.view.damaged_commit_slots():
            report.add(FaultClass.DIGEST, f"commit record slot {slot}", "damaged")
        tail = self.tail_index()
        for group in self.live[tail + 1 :]:
            report.notes.append(f"group {group}: taken, but its header never became durable")
        for index, group in enumerate(self.live[: tail + 1]):
            newest = index == tail
            header = self.view.header(group)
            if header is None:
                self.header_missing(group)
                continue
            self.link(group, header)
            stop_at = self.tail_stop(group, newest)
            yield from self.walk(group, header, stop_at, newest=newest)
            if newest:
                self.check_end(group, header, stop_at)
        if not self.live and meta.clean and meta.last_seq:
            report.add(
                FaultClass.GAP,
                "store",
                f"metadata says {meta.last_seq} entries, no group holds them",
            )

    def tail_index(self) -> int:
        """Index in `live` of the group where the store's entries end. In a store not closed
        cleanly the newest groups may have been taken without their header ever reaching the
        disk (nothing was written in them then); the group before ends the store."""
        index = len(self.live) - 1
        if self.meta.clean:
            return index
        commit = self.commit
        while index >= 0:
            group = self.live[index]
            named = commit is not None and commit.tail[0] == group
            if named or self.view.header(group) is not None:
                break
            index -= 1
        return index

    def header_missing(self, group: int) -> None:
        """A group whose header is unreadable (or of another epoch) though entries must follow
        it: damage, after which the chain restarts at the next readable header."""
        self.report.add(
            FaultClass.DIGEST, f"group {group}", "group header damaged or of the wrong epoch"
        )
        self.prev_chain = None

    def link(self, group: int, header: GroupHeader) -> None:
        """Check that the group continues the previous one, then start the walk at its anchor."""
        report = self.report
        where = f"group {group}"
        floor: int | None = None  # the seq this group may not start before
        if self.unresolved is not None:
            index, first = self.unresolved
            self.unresolved = None
            fault = report.faults[index]
            report.faults[index] = msgspec.structs.replace(
                fault,
                detail=fault.detail.replace(
                    f"seq {first}..)", f"seq {first}..{header.first_seq - 1})"
                ),
            )
            self.reached = max(self.reached, header.first_seq - 1)
            floor = first
        elif self.prev_chain is not None:
            expected = floor = self.expected
            if header.first_seq > expected:
                report.add(
                    FaultClass.GAP, where,
                    f"entries {expected}..{header.first_seq - 1} missing", expected,
                )  # fmt: skip
                self.reached = max(self.reached, header.first_seq - 1)
            elif header.first_seq == expected and header.anchor != self.prev_chain:
                report.add(FaultClass.CHAIN, where, "group anchor does not continue the chain")
        elif report.first_seq is None:
            report.first_seq = header.first_seq
            self.reached = header.first_seq - 1
            self.saw_chain(header.first_seq - 1, header.anchor)
        if floor is not None and header.first_seq < floor:
            report.add(
                FaultClass.CHAIN,
                where,
                f"group restarts at seq {header.first_seq}, after {floor - 1}",
            )
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

    def walk(
        self, group: int, header: GroupHeader, stop_at: int | None, *, newest: bool
    ) -> Iterator[Entry]:
        """Check and yield every entry of the group, from its anchor to where its entries end;
        where they stop before that, `after_stop` says whether and where the walk goes on."""
        view, image = self.view, self.image
        start = view.geo.group_offset(group)
        end = start + (view.geo.group_bytes if stop_at is None else stop_at)
        offset = start + GROUP_HEADER_BYTES
        view.last_offset = GROUP_HEADER_BYTES
        expected: int = header.first_seq
        prev: bytes | None = header.anchor
        while offset < end:
            result = decode_entry_at(image, offset, end, expected, prev)
            if isinstance(result, tuple):
                entry, offset = result
                view.last_offset = offset - start
                self.accept(group, entry)
                yield entry
                expected, prev = entry.seq + 1, entry.chain
                continue
            resumed = self.after_stop(group, offset, end, expected, result, newest=newest)
            if resumed is None:
                break
            offset, expected, prev = resumed
        self.expected = expected
        self.prev_chain = prev if self.unresolved is None else None

    def after_stop(
        self,
        group: int,
        offset: int,
        end: int,
        expected: int,
        fault: EntryFault | None,
        *,
        newest: bool,
    ) -> tuple[int, int, None] | None:
        """The entries of a group stopped at `offset` (with `fault`, or at no entry at all):
        their normal end; a torn tail (only in the newest group of an unclean store, after the
        last durable entry); or damage, reported with its range. Returns where the walk goes on
        (the next entry of this lap whose own seals hold, its seq, no chain to link to) or
        None."""
        if fault is not None and fault.kind == "stale" and not (newest and self.meta.clean):
            fault = None  # an earlier lap's entry: where this lap's entries end
        elif fault is not None and fault.kind == "chain" and self.altered(offset, end, expected):
            fault = EntryFault("digest", f"seq {expected}: sealed header fields or names altered")
        found = self.resync(group, offset + 8, end, expected)
        if fault is None and found is None:
            return None  # the group's entries end here
        if newest and not self.meta.clean:
            if expected > self.durable:
                # Bytes after the last durable entry that do not continue it: a torn tail.
                why = fault.detail if fault is not None else "an entry after a hole"
                self.torn(group, expected, why)
                return None
            if found is None or found[1].seq > self.durable + 1:
                self.damage(group, expected, self.durable, fault)
                if found is not None:
                    self.torn(group, self.durable + 1, "an entry after a hole")
                return None
        if found is not None:
            self.damage(group, expected, found[1].seq - 1, fault)
            return found[0], found[1].seq, None
        # The newest group ends where the store does; for an older one the next group's
        # header says where the damage ends.
        self.damage(group, expected, max(expected, self.durable) if newest else None, fault)
        return None

    def altered(self, offset: int, end: int, seq: int) -> bool:
        """True when the entry at `offset` does not link to its predecessor but the next entry
        links to it: the chain was whole when written, so its own sealed bytes were changed
        since (damage, not a reordering)."""
        fields = ENTRY_HEADER.unpack_from(self.image, offset)
        chain = bytes(fields[11])
        following = align8(offset + ENTRY_HEADER.size + fields[3] + fields[4] + fields[8])
        if isinstance(decode_entry_at(self.image, following, end, seq + 1, chain), tuple):
            return True
        # The last entry: what the commit record or the clean close recorded for it.
        commit, meta = self.commit, self.meta
        return (commit is not None and (commit.last_seq, commit.chain) == (seq, chain)) or (
            meta.clean and (meta.last_seq, meta.last_chain) == (seq, chain)
        )

    def resync(self, group: int, at: int, end: int, expected: int) -> tuple[int, Entry] | None:
        """The next entry of this lap (seq from `expected` on) after `at` whose own seals hold,
        and its offset: where a walk can go on after damage."""
        start = self.view.geo.group_offset(group)
        image = self.image
        at += -(at - start) % 8
        while at + ENTRY_HEADER.size <= end:
            at = image.find(ENTRY_MAGIC, at, end)
            if at < 0 or at + ENTRY_HEADER.size > end:
                return None
            if (at - start) % 8 == 0 and int.from_bytes(
                image[at + 8 : at + 16], "little"
            ) >= expected:
                result = decode_entry_at(image, at, end, None, None)
                if isinstance(result, tuple):
                    return at, result[0]
            at += 1
        return None

    def damage(self, group: int, first: int, last: int | None, fault: EntryFault | None) -> None:
        """Entries from `first` to `last` are damaged (or missing, when no fault says how):
        one fault of the class of what failed. With `last` None the next group's header
        completes the range."""
        span = f"seq {first}..{last if last is not None else ''})"
        if fault is None:
            self.report.add(FaultClass.GAP, f"group {group}", f"entries missing ({span}", first)
        else:
            cls = _KIND_CLASS.get(fault.kind, FaultClass.DIGEST)
            self.report.add(cls, f"group {group}", f"{fault.detail} (entries {span}", first)
        if last is None:
            self.unresolved = (len(self.report.faults) - 1, first)
        self.reached = max(self.reached, last if last is not None else first)

    def torn(self, group: int, first: int, why: str) -> None:
        """What follows the last durable entry was torn by the crash: noted, not a fault."""
        self.report.torn_after = first - 1
        self.report.notes.append(
            f"group {group}: torn tail after seq {first - 1}, the last durable entry ({why})"
        )

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
        self.last_seq = item.seq
        self.reached = max(self.reached, item.seq)
        self.saw_chain(item.seq, item.chain)

    def saw_chain(self, seq: int, chain: bytes) -> None:
        """Keep the chain value at `seq` when a commit record or checkpoint names it."""
        if seq in self.wanted:
            self.wanted[seq] = chain

    def check_end(self, group: int, header: GroupHeader, stop_at: int | None) -> None:
        """How the newest group of a clean store ends: exactly at the clean-close tail, with
        the recorded last seq and chain, and nothing of this lap after it."""
        report, meta = self.report, self.meta
        if not meta.clean:
            return
        where = f"group {group}"
        if stop_at is not None and self.view.last_offset != stop_at:
            report.add(FaultClass.DIGEST, where, "entries end before the clean-close tail")
        elif stop_at is not None and _sealed_after(self.view, group, stop_at, header.first_seq):
            report.add(FaultClass.CHAIN, where, "an entry follows the clean-close tail")
        if self.expected - 1 != meta.last_seq:
            report.add(
                FaultClass.GAP,
                where,
                f"last entry is {self.expected - 1}, metadata says {meta.last_seq}",
            )
        elif self.prev_chain is not None and self.prev_chain != meta.last_chain:
            report.add(FaultClass.CHAIN, where, "last chain value differs from the metadata")

    # -- after the walk --------------------------------------------------------------------

    def summarise(self, *, allow_fallback_clock: bool) -> None:
        """What the walk implies: the durable entries all there, history starting where the
        commit record says, the signatures, the external checkpoint, the clocks, the verdict."""
        report = self.report
        report.last_seq = self.last_seq if report.entries else None
        report.durable_seq = self.commit.last_seq if self.commit is not None else None
        report.history_start = report.first_seq
        self.check_commit()
        self.check_external()
        self.check_clocks(allow_fallback_clock=allow_fallback_clock)
        if report.exit_code & FaultClass.UNREADABLE:
            report.verdict = Verdict.UNREADABLE
        elif not report.ok:
            report.verdict = Verdict.DAMAGED
        elif self.meta.clean:
            report.verdict = Verdict.CLEAN
        else:
            report.verdict = Verdict.TORN if report.torn_after is not None else Verdict.OPEN

    def check_commit(self) -> None:
        """The newest commit record: every entry it names durable is there, its chain value is
        the one the walk found, history starts where it says, and (with a key) it is signed."""
        report, commit = self.report, self.commit
        key_checked = self.check_signature()
        if commit is None:
            return
        if commit.last_seq > self.reached:
            report.add(
                FaultClass.GAP, "store",
                f"entries {self.reached + 1}..{commit.last_seq} missing: the newest commit "
                "record says they were durable", self.reached + 1,
            )  # fmt: skip
        found = self.wanted.get(commit.last_seq)
        if found is not None and found != commit.chain:
            cls = FaultClass.SIGNATURE if key_checked else FaultClass.CHAIN
            report.add(
                cls, "commit record",
                f"the chain at seq {commit.last_seq} differs from what the commit record "
                + ("signed (entries rewritten or re-sealed)" if key_checked else "names"),
            )  # fmt: skip
        first = report.first_seq
        if first is not None and first > commit.start and commit.last_seq >= commit.start:
            report.add(
                FaultClass.GAP, "store",
                f"entries {commit.start}..{first - 1} missing: the newest commit record says "
                f"history starts at seq {commit.start}", commit.start,
            )  # fmt: skip

    def check_signature(self) -> bool:
        """With a key, the newest commit record must carry its signature; True when it does."""
        report, commit, key = self.report, self.commit, self.key
        if commit is not None and commit.signature:
            report.key_id = commit.key_id.hex()
        if key is None:
            report.signatures = "not checked (no key given)"
            return False
        if commit is None:
            if self.live:
                report.add(FaultClass.SIGNATURE, "commit record", "no commit record to check")
            report.signatures = "none"
            return False
        checkpoint = Checkpoint(
            store_id=self.view.store_id, size=commit.last_seq, root=commit.chain,
            start=commit.start,
        )  # fmt: skip
        if not commit.signature:
            report.add(FaultClass.SIGNATURE, "commit record", "unsigned, and a key was given")
            report.signatures = "unsigned"
            return False
        if not key.verify(checkpoint, commit.key_id, commit.signature):
            report.add(
                FaultClass.SIGNATURE,
                "commit record",
                f"not signed by key {key.key_id.hex()} (signed by {commit.key_id.hex()})",
            )
            report.signatures = "invalid"
            return False
        report.signatures = f"verified (key {key.key_id.hex()})"
        return True

    def check_external(self) -> None:
        """A checkpoint kept outside the store: of this store, signed (with a key), and the store
        still holds what it names with the same chain value."""
        external, report = self.external, self.report
        if external is None:
            return
        checkpoint, where = external.checkpoint, external.source
        if checkpoint.store_id != self.view.store_id:
            report.add(
                FaultClass.SIGNATURE, where,
                f"checkpoint of store {checkpoint.store_id.hex()}, not {self.view.store_id.hex()}",
            )  # fmt: skip
            return
        signed = False
        if self.key is not None:
            signed = any(
                self.key.verify(checkpoint, s.key_id, s.signature) for s in external.signatures
            )
            if not signed:
                report.add(FaultClass.SIGNATURE, where, "checkpoint not signed by the key given")
                return
        if checkpoint.size > self.reached:
            report.add(
                FaultClass.GAP, where,
                f"entries {self.reached + 1}..{checkpoint.size} missing: the checkpoint says "
                "the store held them (a cut tail or a rolled-back copy)", self.reached + 1,
            )  # fmt: skip
            return
        found = self.wanted.get(checkpoint.size)
        if found is None:
            report.notes.append(
                f"{where}: checkpoint at seq {checkpoint.size} is older than the retained history"
            )
        elif found != checkpoint.root:
            report.add(
                FaultClass.SIGNATURE if signed else FaultClass.CHAIN, where,
                f"the chain at seq {checkpoint.size} differs from the checkpoint "
                "(entries rewritten or re-sealed)",
            )  # fmt: skip

    def check_clocks(self, *, allow_fallback_clock: bool) -> None:
        """Time quality: which clocks stamped the entries (CLOCK when a fallback did)."""
        report = self.report
        clocks = {ClockSource(k).name: v for k, v in self.counts.items()}
        report.clock_sources = clocks
        fallback = {k: v for k, v in clocks.items() if k != ClockSource.PHC.name}
        if not fallback:
            report.time_quality = "PHC" if clocks else "no entries"
            return
        detail = ", ".join(f"{v} entries stamped by CLOCK_{k}" for k, v in sorted(fallback.items()))
        report.time_quality = f"fallback clock recorded: {detail}"
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
