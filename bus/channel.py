"""Point-to-point messaging (ROUTER/DEALER) with the bus framing: envelope, body, buffers."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import zmq

from vigil.bus.clock import wall_ns
from vigil.bus.codec import Codec
from vigil.bus.envelope import Envelope, TraceContext
from vigil.errors import VigilError
from vigil.schemas import Message, schema_id

__all__ = [
    "Channel",
    "FrameFault",
    "Incoming",
    "allowed_values",
    "drain_events",
    "split_identity",
    "validation_path",
]

Buffer = bytes | memoryview | zmq.Frame

_PATH = re.compile(r"^(?P<rule>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


_STEP = re.compile(r"\.(?P<field>[^.\[]+)|\[(?P<index>[^\]]*)\]")


def validation_path(
    error: msgspec.ValidationError | msgspec.DecodeError, expected: Any = None
) -> tuple[str, str]:
    """Split a msgspec error into (`$.field.path`, rule) for a typed rejection.

    Given the `expected` type that was decoded, a value outside an enum (or a literal) gets
    the values allowed there appended to its rule.
    """
    match = _PATH.match(str(error))
    if match is None:  # pragma: no cover - the pattern matches every string
        return "", str(error)
    path, rule = match.group("path") or "", match.group("rule")
    if expected is not None and rule.startswith(("Invalid enum value", "Expected `")):
        values = allowed_values(expected, path)
        if values:
            rule = f"{rule}; allowed: {', '.join(values)}"
    return path, rule


def allowed_values(expected: Any, path: str) -> list[str] | None:
    """The values an enum or literal field at `path` (msgspec's `$.a[0].b`) of `expected`
    accepts, or None when the field there is something else."""
    types = [msgspec.inspect.type_info(expected)]
    for step in _STEP.finditer(path):
        types = [t for t in (_step(t, step) for t in _members(types)) if t is not None]
    values: list[str] = []
    for t in _members(types):
        if isinstance(t, msgspec.inspect.EnumType):
            values += [str(m.value) if isinstance(m, enum.Enum) else str(m) for m in t.cls]
        elif isinstance(t, msgspec.inspect.LiteralType):
            values += [str(v) for v in t.values]
        else:
            return None
    return values or None


def _members(types: list[msgspec.inspect.Type]) -> list[msgspec.inspect.Type]:
    """The types a value may be: unions opened, constraints and None left out."""
    out: list[msgspec.inspect.Type] = []
    for given in types:
        t = given
        while isinstance(t, msgspec.inspect.Metadata):
            t = t.type
        if isinstance(t, msgspec.inspect.UnionType):
            out += _members(list(t.types))
        elif not isinstance(t, msgspec.inspect.NoneType):
            out.append(t)
    return out


def _step(t: msgspec.inspect.Type, step: re.Match[str]) -> msgspec.inspect.Type | None:
    field, index = step.group("field"), step.group("index")
    if field is not None:
        if isinstance(t, msgspec.inspect.StructType):
            return next((f.type for f in t.fields if f.encode_name == field), None)
        if isinstance(t, msgspec.inspect.DictType):
            return t.value_type
        return None
    if isinstance(t, msgspec.inspect.DictType):
        return t.value_type
    if isinstance(t, msgspec.inspect.TupleType):
        return (
            t.item_types[int(index)] if index.isdigit() and int(index) < len(t.item_types) else None
        )
    if isinstance(
        t,
        msgspec.inspect.ListType
        | msgspec.inspect.VarTupleType
        | msgspec.inspect.SetType
        | msgspec.inspect.FrozenSetType,
    ):
        return t.item_type
    return None


@dataclass(slots=True)
class Incoming:
    """A decoded point-to-point message and the routing identity it came from."""

    identity: list[bytes]
    envelope: Envelope
    body: Any
    buffers: list[zmq.Frame]


class FrameFault(VigilError):
    """Frames that do not decode; carries what the rejection needs (never raised past a node).

    `envelope` is the sender's envelope when it was readable (the body was not), so the
    rejection can still answer in the sender's trace.
    """

    def __init__(
        self,
        identity: list[bytes],
        seq: int,
        what: str,
        field: str,
        rule: str,
        *,
        envelope: Envelope | None = None,
    ) -> None:
        super().__init__(f"{what}: {rule} at {field}")
        self.identity = identity
        self.seq = seq
        self.what = what
        self.field = field
        self.rule = rule
        self.envelope = envelope


def drain_events(monitor: zmq.Socket[bytes]) -> int:
    """Read every pending event of a socket monitor; returns how many there were."""
    count = 0
    while True:
        try:
            monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return count
        count += 1


def split_identity(frames: list[zmq.Frame]) -> tuple[list[bytes], list[zmq.Frame]]:
    """Split ROUTER frames into the identity prefix and the message (DEALERs send no
    empty delimiter on the bus, so the identity is every frame up to the first envelope)."""
    return [frames[0].bytes], frames[1:]


class Channel:
    """Sends and receives typed messages on one ROUTER or DEALER socket.

    The socket is owned by the caller's ExitStack; a channel only frames, numbers, encodes
    and decodes. Envelope sequence numbers double as request ids on the request path.
    """

    def __init__(
        self,
        socket: zmq.Socket[bytes],
        *,
        source: str,
        instance: int = 0,
        routed: bool = False,
        clock: Callable[[], int] = wall_ns,
        session: int = 0,
    ) -> None:
        self.socket = socket
        self._source = source
        self._instance = instance
        self.session = session
        self._routed = routed
        self._clock = clock
        self._codec = Codec()
        self._seq = 0
        self._schemas: dict[type[Message], str] = {}

    def next_seq(self) -> int:
        """Reserve the next sequence number (a request id for the caller to track)."""
        self._seq += 1
        return self._seq

    def envelope(
        self,
        body: Message | type[Message],
        *,
        seq: int | None = None,
        trace: TraceContext | None = None,
        deadline_wall_ns: int = 0,
        priority: int = 0,
        tenant: str = "",
        request_id: bytes = b"",
        background: bool = False,
    ) -> Envelope:
        """An envelope for `body` (a message or a message type) from this channel's node."""
        cls = body if isinstance(body, type) else type(body)
        schema = self._schemas.get(cls)
        if schema is None:
            schema = self._schemas[cls] = schema_id(cls)
        return Envelope.build(
            schema=schema,
            seq=self.next_seq() if seq is None else seq,
            source=self._source,
            instance=self._instance,
            stamp_ns=self._clock(),
            trace=trace,
            deadline_wall_ns=deadline_wall_ns,
            priority=priority,
            tenant=tenant,
            session=self.session,
            request_id=request_id,
            background=background,
        )

    def restamp(self, envelope: Envelope) -> Envelope:
        """`envelope` stamped now: a re-sent request's budget counts from its re-sending."""
        return msgspec.structs.replace(envelope, stamp_ns=self._clock())

    def encode(self, obj: Envelope | Message) -> bytes:
        """MessagePack bytes of an envelope or body, with this channel's encoder."""
        return self._codec.encode(obj)

    def send(
        self,
        body: Message,
        *,
        identity: Sequence[bytes] = (),
        envelope: Envelope | None = None,
        buffers: Sequence[Buffer] = (),
        flags: int = 0,
    ) -> Envelope:
        """Send one message (to `identity` on a ROUTER); returns the envelope it went with."""
        env = envelope if envelope is not None else self.envelope(body)
        parts: list[Buffer] = [*identity, self._codec.encode(env), self._codec.encode(body)]
        parts.extend(buffers)
        self.socket.send_multipart(parts, flags=flags, copy=not buffers)
        return env

    def forward(
        self,
        frames: Sequence[Buffer],
        *,
        identity: Sequence[bytes] = (),
        envelope: Envelope | None = None,
        flags: int = 0,
    ) -> None:
        """Send already-encoded body and buffer frames on under a new envelope (or none),
        without copying tensor buffers."""
        head = [self._codec.encode(envelope)] if envelope is not None else []
        self.socket.send_multipart([*identity, *head, *frames], flags=flags, copy=False)

    def peek_envelope(self, frames: list[zmq.Frame]) -> Envelope | None:
        """The envelope of frames refused before decoding (too large), when it is a small,
        valid envelope; None otherwise. Only the envelope frame is read."""
        _, rest = split_identity(frames) if self._routed else ([], frames)
        if not rest or len(rest[0]) > _MAX_PEEK_BYTES:
            return None
        try:
            return self._codec.decode_envelope(rest[0].buffer)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
            return None

    def recv(self, flags: int = 0) -> Incoming:
        """Receive and decode one message; raises FrameFault for frames that do not decode."""
        return self.decode(self.socket.recv_multipart(flags, copy=False))

    # implements: SR-ING-003
    def decode(self, frames: list[zmq.Frame]) -> Incoming:
        """Decode frames read from this channel's socket; raises FrameFault when they fail."""
        identity, rest = split_identity(frames) if self._routed else ([], frames)
        if len(rest) < 2:
            raise FrameFault(identity, 0, "framing", "$", "expected envelope and body frames")
        try:
            envelope = self._codec.decode_envelope(rest[0].buffer)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            field, rule = validation_path(exc)
            raise FrameFault(identity, _peek_seq(rest[0]), "envelope", field, rule) from exc
        except UnicodeDecodeError as exc:
            raise FrameFault(identity, 0, "envelope", "$", "invalid UTF-8") from exc
        except RecursionError as exc:  # msgspec recurses per nesting level
            raise FrameFault(identity, 0, "envelope", "$", _TOO_DEEP) from exc
        try:
            body = self._codec.decode_body(envelope.schema, rest[1].buffer)
        except KeyError as exc:
            raise FrameFault(
                identity, envelope.seq, "schema", "$.schema", "unknown schema id", envelope=envelope
            ) from exc
        except msgspec.ValidationError as exc:
            # A type error is reported first even in truncated input; tell the two apart so
            # broken framing is never filed as a schema violation. The second pass only walks
            # the bytes (no value is built), so a hostile body costs linear work and no memory.
            try:
                self._codec.check_wellformed(rest[1].buffer)
            except (msgspec.DecodeError, UnicodeDecodeError) as broken:
                raise FrameFault(
                    identity, envelope.seq, "body", "$", str(broken), envelope=envelope
                ) from broken
            except RecursionError as deep:
                raise FrameFault(
                    identity, envelope.seq, "body", "$", _TOO_DEEP, envelope=envelope
                ) from deep
            field, rule = validation_path(exc)
            raise FrameFault(
                identity, envelope.seq, "body", field, rule, envelope=envelope
            ) from exc
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise FrameFault(
                identity, envelope.seq, "body", "$", str(exc), envelope=envelope
            ) from exc
        except RecursionError as exc:
            raise FrameFault(
                identity, envelope.seq, "body", "$", _TOO_DEEP, envelope=envelope
            ) from exc
        return Incoming(identity, envelope, body, rest[2:])


class _Head(msgspec.Struct, array_like=True):
    """The first two items of an envelope; the rest is skipped, never built."""

    schema: msgspec.Raw
    seq: int


_PEEK = msgspec.msgpack.Decoder(_Head)
# Every envelope field is bounded; a valid envelope is a few hundred bytes at most.
_MAX_PEEK_BYTES = 1024
_TOO_DEEP = "nesting too deep"


def _peek_seq(frame: zmq.Frame) -> int:
    """The sequence number of a malformed envelope when it can be read, else 0, so the
    sender can still match the rejection to its request."""
    try:
        seq = _PEEK.decode(frame.buffer).seq
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return 0
    # MessagePack `true` decodes to a Python int too, but is no sequence number.
    return seq if type(seq) is int and seq >= 0 else 0
