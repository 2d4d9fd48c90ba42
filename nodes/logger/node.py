"""The logger node: seal every diagnostic, audit, state, model and log message into the store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

import msgspec

from vigil.bus.pubsub import Received, Subscriber
from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.logger._checkpoint import Signer, generate_key, load_signer, parse_note
from vigil.nodes.logger._contract import KIND, LoggerConfig
from vigil.nodes.logger._evidence import SealedStores, evidence_config
from vigil.nodes.logger._positions import PositionsFile
from vigil.nodes.logger.store import (
    EntryTooLarge,
    LogStore,
    Record,
    RecordRefused,
    StoreConfig,
)
from vigil.schemas import (
    AuditEvent,
    AuditId,
    DiagCode,
    EndedRequests,
    LogCheckpoint,
    RequestEvidence,
    Severity,
    Topic,
    schema_id,
)

__all__ = [
    "GENERATED_KEY",
    "KEY_EVENT",
    "REFUSED_EVENT",
    "REPLAY_EVENT",
    "Refusal",
    "Replayed",
    "run",
]

_AUDIT_SCHEMA = schema_id(AuditEvent)
_REQUEST_SCHEMA = schema_id(RequestEvidence)
# Messages taken from the socket per wake-up, sealed and stored as one burst.
_BURST = 1024
# The entry that stands for a message the store could not take as it came.
REFUSED_EVENT: Final = "log.refused"
# The entry that stands for a message `vigil bag play` published again.
REPLAY_EVENT: Final = "log.replay"
# The entry that says which key signs the checkpoints and where it came from.
KEY_EVENT: Final = "log.key"
# Where the logger keeps the key it generates when none is configured (run directory).
GENERATED_KEY: Final = "log.key"
_ENCODER = msgspec.msgpack.Encoder()


class Replayed(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a `log.replay` entry: a replayed message, marked as such.

    `body` is the message body as received (embedded, so it reads as the message it is); the
    entry's node is the recorded publisher, its trace the recorded one.
    """

    replay: int  # the replay's id (the envelope's `replay`)
    schema: str
    stamp_ns: int  # the recorded publisher's stamp
    body: msgspec.Raw


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """The payload of a `log.refused` entry: why, what came, and the message's digest.

    `payload` is the message body as received, left empty only when it fits no entry itself
    (then `payload_bytes` and `sha256` still identify it).
    """

    reason: str
    node: str
    event: str
    trace_id: bytes
    payload_bytes: int
    sha256: bytes
    payload: bytes = b""


# implements: SR-LOG-003, SR-ERR-002
def run(config: LoggerConfig, args: NodeArgs) -> ExitCode:
    """Append every message of the configured topics until SIGTERM/SIGINT, then commit."""
    with Node(args) as node:
        store_config = _resolved(node, config.store)
        evidence = _resolved(node, config.evidence or evidence_config(config.store))
        signer, origin = _signing_key(node, store_config)
        store_config = msgspec.structs.replace(store_config, signing_key="")
        evidence = msgspec.structs.replace(evidence, signing_key="")
        with SealedStores.open(store_config, evidence, signer=signer) as stores:
            _seal_key(stores, signer, origin)
            positions = PositionsFile(Path(store_config.path + ".positions"), node.clock)
            _serve(node, config, args, stores, positions)
    return ExitCode.OK


def _serve(
    node: Node, config: LoggerConfig, args: NodeArgs, stores: SealedStores, positions: PositionsFile
) -> None:
    sub = node.subscriber(config.topics, strict=True, skip_replayed=not config.seal_replay)
    resumed = positions.resume(sub)
    node.log.info("logger.resumed", publisher_topics=resumed)
    stats = stores.stats
    node.log.info(
        "logger.store", sealer=stats.sealer, clock_source=stats.clock_source, key_id=stats.key_id
    )
    node.ready(KIND.contract(config))
    outside = _Outside(node, stores, positions)
    lost_seen = 0
    commits_seen = -1
    refused = 0
    while not node.stopping:
        events = node.poll(stores.poll_timeout_ms())
        if events.get(sub.socket):
            # One receive burst is sealed and stored in one pass.
            for refusal in _append(stores, _burst(sub, stores)):
                node.log.warning("logger.refused", reason=refusal.reason, node=refusal.node)
                refused += 1
        if sub.lost > lost_seen:
            # Publishers number every message: a gap is recorded, never hidden.
            gaps = {t: s.lost for t, s in sub.stats.items() if s.lost}
            gap = AuditEvent(
                event=AuditId.LOG_GAP,
                node=args.label,
                detail=f"messages lost before the logger: {gaps}",
                instance_id=args.instance_id,
            )
            stores.append_many(
                [
                    (args.label, _AUDIT_SCHEMA, _ENCODER.encode(gap), b""),
                    _binary(stores, gap, args.label, b""),
                ]
            )
            lost_seen = sub.lost
        if stores.poll_timeout_ms() == 0:
            stores.commit()  # group commit: one msync for every entry since the last
        stats = stores.stats
        if stats.commits != commits_seen:
            outside.save(sub)
            # Read by the heartbeat thread and, over the bus, by the metrics node.
            commits_seen = stats.commits
            node.heartbeat_detail = {
                "last_commit_ms": f"{stats.last_commit_latency_ms:.3f}",
                "max_commit_ms": f"{stats.max_commit_latency_ms:.3f}",
                "entries": str(stats.entries),
                "committed_seq": str(stats.committed_seq),
                "refused": str(refused),
                "degraded": "yes" if outside.degraded else "no",
            }
    # What arrived before the stop is sealed too: the reason a launch stops is published
    # just before its nodes are stopped, the logger among the last.
    for _ in range(_DRAIN_BURSTS):
        if not sub.socket.poll(0):
            break
        _append(stores, _burst(sub, stores))
    stores.commit()
    outside.save(sub, final=True)
    node.log.info("node.stopping", reason=node.stop_reason, lost=sub.lost)


def _resolved(node: Node, store: StoreConfig) -> StoreConfig:
    """The store's paths (file and key) resolved against the run directory."""
    key = str(node.resolve(store.signing_key)) if store.signing_key else ""
    return msgspec.structs.replace(store, path=str(node.resolve(store.path)), signing_key=key)


def _signing_key(node: Node, store: StoreConfig) -> tuple[Signer, str]:
    """The configured signing key, or one generated into the run directory (and kept there
    for the next start of this run); with where it came from."""
    if store.signing_key:
        return load_signer(store.signing_key), f"configured: {store.signing_key}"
    private, public = node.resolve(GENERATED_KEY), node.resolve(GENERATED_KEY).with_suffix(".pub")
    if private.exists():
        return load_signer(private), f"generated for this run: {private}"
    signer = generate_key(private, public)
    node.log.warning(
        "logger.key_generated",
        detail="no signing_key configured: checkpoints are signed with a key made for this run",
        private=str(private),
        public=str(public),
        key_id=signer.key_id.hex(),
    )
    return signer, f"generated for this run: {private}"


def _seal_key(stores: SealedStores, signer: Signer, origin: str) -> None:
    """Seal which key signs the checkpoints and where it came from, in both stores."""
    record = _ENCODER.encode(
        {"key_id": signer.key_id.hex(), "public_key": signer.public, "origin": origin}
    )
    for _, store in stores.stores():
        store.append(node="logger", event=KEY_EVENT, payload=record)


class _Outside:
    """What the logger writes beside its stores: the positions file, checkpoint copies on disk
    and on the bus. A full disk never stops the logger: it goes on sealing into the stores
    (preallocated), says so once with a diagnostic, and retries each when it is next due."""

    def __init__(self, node: Node, stores: SealedStores, positions: PositionsFile) -> None:
        self._node = node
        self._stores = stores
        self._positions = positions
        self._published: dict[str, bytes] = {}
        self.degraded = False
        self._checkpoint_errors = 0

    def save(self, sub: Subscriber, *, final: bool = False) -> None:
        """Save the positions when due (see `PositionsFile`) and publish new checkpoints;
        enter or leave degraded mode."""
        self._positions.save(sub, final=final)
        problem = self._positions.problem
        errors = sum(store.stats.checkpoint_errors for _, store in self._stores.stores())
        if errors > self._checkpoint_errors:
            self._checkpoint_errors = errors
            problem = problem or f"checkpoint file: {self._stores.stats.checkpoint_error}"
        if problem and not self.degraded:
            self.degraded = True
            self._node.log.error("logger.degraded", reason=problem)
            self._node.diag(
                DiagCode.LOG_DEGRADED,
                f"{problem}; sealing goes on into the preallocated stores",
                severity=Severity.ERROR,
            )
        elif not problem and self.degraded:
            self.degraded = False
            self._node.log.info("logger.recovered_space")
        self._publish()

    def _publish(self) -> None:
        for name, store in self._stores.stores():
            note = store.checkpoint
            if not note or self._published.get(name) == note:
                continue
            self._published[name] = note
            checkpoint, _ = parse_note(note)
            self._node.publisher.publish(
                Topic.LOG_CHECKPOINT,
                LogCheckpoint(
                    store=name, store_id=checkpoint.store_id.hex(), size=checkpoint.size,
                    start=checkpoint.start, note=note.decode(),
                ),
            )  # fmt: skip


# implements: SR-LOG-003, SR-ERR-002
def _append(store: LogStore | SealedStores, records: list[Record]) -> list[Refusal]:
    """Append a burst; each record the store refuses is sealed in its place as a `log.refused`
    entry instead, so a malformed message is recorded with its reason and never stops the
    logger. Returns the refusals."""
    refusals: list[Refusal] = []
    start = 0
    while True:
        rest = records[start:] if start else records
        try:
            store.append_many(rest)
            return refusals
        except RecordRefused as exc:
            refusal = _refusal(rest[exc.index], exc)
            try:
                store.append(node="logger", event=REFUSED_EVENT, payload=_ENCODER.encode(refusal))
            except EntryTooLarge:  # the body and the refusal around it fit no group: drop the body
                refusal = msgspec.structs.replace(refusal, payload=b"")
                store.append(node="logger", event=REFUSED_EVENT, payload=_ENCODER.encode(refusal))
            refusals.append(refusal)
            start += exc.index + 1


def _refusal(record: Record, exc: RecordRefused) -> Refusal:
    node, event, payload, trace = record
    body = bytes(payload)
    return Refusal(
        reason=exc.reason,
        node=node,
        event=str(event),
        trace_id=trace,
        payload_bytes=len(body),
        sha256=hashlib.sha256(body).digest(),
        payload=b"" if isinstance(exc, EntryTooLarge) else body,
    )


_DRAIN_BURSTS = 16


def _burst(sub: Subscriber, store: LogStore | SealedStores) -> list[Record]:
    """The records of what arrived (up to `_BURST` messages), in arrival order."""
    records: list[Record] = []
    for _ in range(_BURST):
        received = sub.recv(0)
        if received is None:
            break
        envelope = received.envelope
        source = f"{envelope.source}.{envelope.instance}" if envelope.instance else envelope.source
        if envelope.replay:
            # A replayed message is evidence of the replay, not of the live system.
            records.append((source, REPLAY_EVENT, _replayed(received), envelope.trace_id))
            continue
        body = received.body
        if isinstance(body, EndedRequests):
            # One entry per request, as if each had come on its own in its trace.
            records.extend(
                (source, _REQUEST_SCHEMA, _ENCODER.encode(ended.evidence), ended.trace_id)
                for ended in body.requests
            )
            continue
        # The body frame arrives copied (small frames are): it is stored as it came.
        records.append((source, envelope.schema, received.frames[2], envelope.trace_id))
        if isinstance(body, AuditEvent):
            records.append(_binary(store, body, source, envelope.trace_id))
    return records


def _replayed(received: Received) -> bytes:
    """The payload of a replayed message's entry."""
    envelope = received.envelope
    return _ENCODER.encode(
        Replayed(
            replay=envelope.replay,
            schema=envelope.schema,
            stamp_ns=envelope.stamp_ns,
            body=msgspec.Raw(received.frames[2]),
        )
    )


def _binary(
    store: LogStore | SealedStores, event: AuditEvent, source: str, trace_id: bytes
) -> Record:
    """The fixed-layout binary record of an audit event, sealed beside its full entry: what a
    DLT-style reader or an assessor's tool reads without MessagePack (`vigil log audit`)."""
    return store.audit_record(
        event.event,
        instance=event.instance_id,
        payload=event.detail.encode()[:32],
        node=source,
        trace_id=trace_id,
    )
