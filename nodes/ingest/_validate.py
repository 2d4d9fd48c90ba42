"""Request validation: every rule a frame must pass before it reaches a worker."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import msgspec
import zmq

from vigil.bus.channel import FrameFault, Incoming
from vigil.schemas import DiagCode, ErrorCode, InferRequest, schema_id
from vigil.schemas.infer import MAX_FRAME_BYTES

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Limits",
    "Owner",
    "Rejection",
    "RequestValidator",
    "classify_rule",
]

_REQUEST_SCHEMA = schema_id(InferRequest)
DEFAULT_MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + 64 * 1024
_RANGE_MARKERS = (">=", "<=", "> ", "< ", "length")
# Who a stream belongs to: the authenticated peer's name and its connection's routing id.
Owner = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds a request must respect (from the ingest's configuration)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_height: int = 1080
    max_width: int = 1920
    max_streams: int = 256  # per owner (a peer's connection)
    max_owners: int = 1024


class Rejection(Exception):
    """A request that breaks a rule; becomes an ErrorReply and a diagnostic event."""

    def __init__(
        self,
        diag: DiagCode,
        field: str,
        rule: str,
        *,
        code: ErrorCode = ErrorCode.INVALID_ARGUMENT,
        retry_after_ms: int = 0,
    ) -> None:
        super().__init__(f"{field}: {rule}")
        self.code = code
        self.diag = diag
        self.field = field
        self.rule = rule
        # When the client may try again (0: no advice), for refusals of a passing condition.
        self.retry_after_ms = retry_after_ms


def classify_rule(rule: str) -> DiagCode:
    """Range and length violations are DIA-2047; anything else is a schema violation."""
    return (
        DiagCode.RANGE_OR_SEQUENCE
        if any(m in rule for m in _RANGE_MARKERS)
        else DiagCode.SCHEMA_VIOLATION
    )


def rejection_from_fault(fault: FrameFault) -> Rejection:
    """Map a frame that failed to decode onto its diagnostic code."""
    cause = fault.__cause__
    if cause is None:  # built by hand: judge by the rule text msgspec writes
        undecodable = fault.what == "envelope" and "Expected" not in fault.rule
    else:  # a ValidationError is a DecodeError too, but one of a well-formed message
        undecodable = isinstance(
            cause, msgspec.DecodeError | RecursionError | UnicodeDecodeError
        ) and not isinstance(cause, msgspec.ValidationError)
    if fault.what == "framing" or undecodable:
        return Rejection(DiagCode.MALFORMED_FRAME, fault.field or "$", fault.rule)
    return Rejection(classify_rule(fault.rule), fault.field or "$", fault.rule)


# implements: SR-ING-001
class RequestValidator:
    """Checks a decoded request against the rules the schema cannot express alone.

    Schema constraints (types, ranges, lengths, patterns) are already checked by the typed
    decode; this adds the cross-frame rules: tensor shape and dtype whitelist, the buffer's
    size against the declared shape, and strictly increasing frame timestamps per stream.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # A stream belongs to whoever opened it: its owner is the authenticated peer and the
        # connection it came on, so no other client can move its timestamps. Bounded twice:
        # a client inventing stream ids, or connections, cannot grow the ingest's memory.
        self._last_ts: OrderedDict[Owner, OrderedDict[str, int]] = OrderedDict()

    def check_size(self, frames: list[zmq.Frame]) -> int:
        """Refuse an oversized or mis-framed message before decoding a byte of it; its size."""
        total = sum(len(f) for f in frames)
        if total > self.limits.max_message_bytes:
            raise Rejection(
                DiagCode.SIZE_LIMIT, "$", f"message of {total} bytes exceeds the size limit"
            )
        return total

    # implements: SR-ING-002
    def check(self, incoming: Incoming, owner: Owner = ("", b"")) -> InferRequest:
        """The request, or a Rejection naming the field and rule it broke."""
        if incoming.envelope.schema != _REQUEST_SCHEMA:
            raise Rejection(DiagCode.SCHEMA_VIOLATION, "$.schema", "expected infer.request")
        request: InferRequest = incoming.body
        image = request.image
        if image.dtype != "uint8":
            raise Rejection(DiagCode.RANGE_OR_SEQUENCE, "$.image.dtype", "expected uint8")
        if len(image.shape) != 3 or image.shape[2] != 3:
            raise Rejection(
                DiagCode.RANGE_OR_SEQUENCE, "$.image.shape", "expected [height, width, 3]"
            )
        height, width, _ = image.shape
        if height > self.limits.max_height or width > self.limits.max_width:
            raise Rejection(
                DiagCode.RANGE_OR_SEQUENCE,
                "$.image.shape",
                f"expected at most {self.limits.max_height}x{self.limits.max_width}",
            )
        if request.shm is not None:
            # The pixels lie in the client's shared memory: the ingest's shared-frame check
            # validates the descriptor; no buffer may come with it.
            if incoming.buffers:
                raise Rejection(
                    DiagCode.MALFORMED_FRAME, "$.shm", "a shared frame comes without buffers"
                )
        else:
            self._check_buffer(incoming, height * width * 3)
        streams = self._last_ts.get(owner)
        last = streams.get(request.stream_id) if streams is not None else None
        if last is not None and request.frame_ts_us <= last:
            raise Rejection(
                DiagCode.RANGE_OR_SEQUENCE,
                "$.frame_ts_us",
                f"must increase per stream (last accepted {last})",
            )
        return request

    def _check_buffer(self, incoming: Incoming, expected: int) -> None:
        image = incoming.body.image
        if len(incoming.buffers) != 1 or image.buffer != 0:
            raise Rejection(
                DiagCode.MALFORMED_FRAME, "$.image.buffer", "expected exactly one tensor buffer"
            )
        available = len(incoming.buffers[0]) - image.offset
        if available != expected:
            raise Rejection(
                DiagCode.SIZE_LIMIT,
                "$.image",
                f"buffer holds {max(available, 0)} bytes, shape needs {expected}",
            )

    # implements: SR-SEC-003
    def accept(self, request: InferRequest, owner: Owner = ("", b"")) -> None:
        """Record an accepted request's timestamp for the per-stream sequence rule."""
        streams = self._last_ts.get(owner)
        if streams is None:
            streams = self._last_ts[owner] = OrderedDict()
            if len(self._last_ts) > self.limits.max_owners:
                self._last_ts.popitem(last=False)
        else:
            self._last_ts.move_to_end(owner)
        streams[request.stream_id] = request.frame_ts_us
        streams.move_to_end(request.stream_id)
        if len(streams) > self.limits.max_streams:
            streams.popitem(last=False)
