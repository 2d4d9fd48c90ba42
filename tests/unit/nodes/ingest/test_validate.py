"""The request validator: every rule, the diagnostic code it maps to, and the stream table."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import zmq

from vigil.bus.channel import Channel, FrameFault, Incoming
from vigil.bus.envelope import Envelope
from vigil.nodes.ingest._validate import (
    Limits,
    Rejection,
    RequestValidator,
    classify_rule,
    rejection_from_fault,
)
from vigil.schemas import DiagCode, ErrorCode, InferRequest, TensorRef

pytestmark = pytest.mark.verifies("SR-ING-001", "SR-ING-002")

LIMITS = Limits(max_message_bytes=1000, max_height=8, max_width=16, max_streams=3)


def _request(**overrides: Any) -> InferRequest:
    fields: dict[str, Any] = {
        "stream_id": "cam-1",
        "frame_ts_us": 100,
        "image": TensorRef(dtype="uint8", shape=(4, 5, 3)),
    }
    fields.update(overrides)
    return InferRequest(**fields)


def _incoming(
    request: InferRequest | None = None,
    *,
    buffers: list[bytes] | None = None,
    schema: str = "infer.request",
) -> Incoming:
    request = request if request is not None else _request()
    if buffers is None:
        height, width, channels = request.image.shape
        buffers = [bytes(request.image.offset + height * width * channels)]
    envelope = Envelope(schema=schema, seq=1, source="client")
    return Incoming([b"client"], envelope, request, [zmq.Frame(b) for b in buffers])


def _rejected(
    validator: RequestValidator, incoming: Incoming, owner: tuple[str, bytes] = ("", b"")
) -> Rejection:
    with pytest.raises(Rejection) as info:
        validator.check(incoming, owner)
    return info.value


def test_valid_request_passes() -> None:
    """A request within every limit is returned unchanged."""
    incoming = _incoming()
    assert RequestValidator(LIMITS).check(incoming) is incoming.body


def test_largest_allowed_image_passes() -> None:
    """An image of exactly max_height x max_width passes."""
    request = _request(image=TensorRef(dtype="uint8", shape=(8, 16, 3)))
    assert RequestValidator(LIMITS).check(_incoming(request)) is request


def test_other_schema_is_a_schema_violation() -> None:
    """A message that is not an infer.request is DIA-2002 at `$.schema`."""
    rejection = _rejected(RequestValidator(LIMITS), _incoming(schema="control.credit"))
    assert (rejection.diag, rejection.field) == (DiagCode.SCHEMA_VIOLATION, "$.schema")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_non_uint8_image_is_out_of_range(dtype: str) -> None:
    """Only uint8 images are accepted: another dtype is DIA-2047 at `$.image.dtype`."""
    request = _request(image=TensorRef(dtype=dtype, shape=(4, 5, 3)))  # type: ignore[arg-type]
    rejection = _rejected(RequestValidator(LIMITS), _incoming(request, buffers=[bytes(240)]))
    assert (rejection.diag, rejection.field) == (DiagCode.RANGE_OR_SEQUENCE, "$.image.dtype")


@pytest.mark.parametrize("shape", [(4, 5), (4, 5, 1), (4, 5, 4), (1, 4, 5, 3), (60,)])
def test_image_must_be_height_width_3(shape: tuple[int, ...]) -> None:
    """An image that is not [height, width, 3] is DIA-2047 at `$.image.shape`."""
    request = _request(image=TensorRef(dtype="uint8", shape=shape))
    rejection = _rejected(RequestValidator(LIMITS), _incoming(request, buffers=[bytes(60)]))
    assert (rejection.diag, rejection.field) == (DiagCode.RANGE_OR_SEQUENCE, "$.image.shape")
    assert rejection.rule == "expected [height, width, 3]"


@pytest.mark.parametrize("shape", [(9, 16, 3), (8, 17, 3)])
def test_oversized_image_is_out_of_range(shape: tuple[int, ...]) -> None:
    """An image taller or wider than the limits is DIA-2047 naming the limit."""
    request = _request(image=TensorRef(dtype="uint8", shape=shape))
    rejection = _rejected(RequestValidator(LIMITS), _incoming(request))
    assert (rejection.diag, rejection.field) == (DiagCode.RANGE_OR_SEQUENCE, "$.image.shape")
    assert rejection.rule == "expected at most 8x16"


@pytest.mark.parametrize("buffers", [[], [bytes(60), bytes(60)]], ids=["none", "two"])
def test_exactly_one_buffer_is_required(buffers: list[bytes]) -> None:
    """A request without exactly one tensor buffer is DIA-2001 at `$.image.buffer`."""
    rejection = _rejected(RequestValidator(LIMITS), _incoming(buffers=buffers))
    assert (rejection.diag, rejection.field) == (DiagCode.MALFORMED_FRAME, "$.image.buffer")


def test_image_must_use_buffer_zero() -> None:
    """An image that points at another buffer than the first is DIA-2001."""
    request = _request(image=TensorRef(dtype="uint8", shape=(4, 5, 3), buffer=1))
    rejection = _rejected(RequestValidator(LIMITS), _incoming(request))
    assert (rejection.diag, rejection.field) == (DiagCode.MALFORMED_FRAME, "$.image.buffer")


@pytest.mark.parametrize("size", [0, 59, 61, 120])
def test_buffer_size_must_match_the_shape(size: int) -> None:
    """A buffer smaller or larger than the shape needs is DIA-2010 at `$.image`."""
    rejection = _rejected(RequestValidator(LIMITS), _incoming(buffers=[bytes(size)]))
    assert (rejection.diag, rejection.field) == (DiagCode.SIZE_LIMIT, "$.image")
    assert rejection.rule == f"buffer holds {size} bytes, shape needs 60"


def test_offset_counts_against_the_buffer() -> None:
    """Bytes before the offset are not part of the image."""
    request = _request(image=TensorRef(dtype="uint8", shape=(4, 5, 3), offset=4))
    validator = RequestValidator(LIMITS)
    assert validator.check(_incoming(request, buffers=[bytes(64)])) is request
    rejection = _rejected(validator, _incoming(request, buffers=[bytes(60)]))
    assert rejection.diag == DiagCode.SIZE_LIMIT


def test_offset_past_the_buffer_reports_zero_bytes() -> None:
    """An offset beyond the buffer is DIA-2010 and reports no bytes available."""
    request = _request(image=TensorRef(dtype="uint8", shape=(4, 5, 3), offset=100))
    rejection = _rejected(RequestValidator(LIMITS), _incoming(request, buffers=[bytes(60)]))
    assert rejection.diag == DiagCode.SIZE_LIMIT
    assert rejection.rule.startswith("buffer holds 0 bytes")


def test_oversized_message_is_a_size_violation() -> None:
    """Frames totalling more than max_message_bytes are DIA-2010 at `$`."""
    validator = RequestValidator(LIMITS)
    with pytest.raises(Rejection) as info:
        validator.check_size([zmq.Frame(bytes(600)), zmq.Frame(bytes(401))])
    assert (info.value.diag, info.value.field) == (DiagCode.SIZE_LIMIT, "$")
    assert "1001 bytes" in info.value.rule


def test_message_at_the_size_limit_passes() -> None:
    """Frames totalling exactly max_message_bytes pass the size check."""
    RequestValidator(LIMITS).check_size([zmq.Frame(bytes(600)), zmq.Frame(bytes(400))])


def test_rejection_is_invalid_argument_by_default() -> None:
    """A rejection answers INVALID_ARGUMENT unless told otherwise."""
    rejection = _rejected(RequestValidator(LIMITS), _incoming(buffers=[]))
    assert rejection.code == ErrorCode.INVALID_ARGUMENT
    assert str(rejection) == f"{rejection.field}: {rejection.rule}"


# -- per-stream timestamps ----------------------------------------------------------------


@pytest.mark.parametrize("ts", [100, 99, 1])
def test_timestamp_must_increase_per_stream(ts: int) -> None:
    """A frame not newer than the stream's last accepted one is DIA-2047 at `$.frame_ts_us`."""
    validator = RequestValidator(LIMITS)
    validator.accept(_request(frame_ts_us=100))
    rejection = _rejected(validator, _incoming(_request(frame_ts_us=ts)))
    assert (rejection.diag, rejection.field) == (DiagCode.RANGE_OR_SEQUENCE, "$.frame_ts_us")
    assert "last accepted 100" in rejection.rule


def test_newer_timestamp_passes() -> None:
    """A frame newer than the last accepted one passes."""
    validator = RequestValidator(LIMITS)
    validator.accept(_request(frame_ts_us=100))
    assert validator.check(_incoming(_request(frame_ts_us=101))).frame_ts_us == 101


def test_streams_are_sequenced_independently() -> None:
    """Another stream's timestamps do not constrain this one."""
    validator = RequestValidator(LIMITS)
    validator.accept(_request(stream_id="cam-1", frame_ts_us=100))
    validator.check(_incoming(_request(stream_id="cam-2", frame_ts_us=5)))


def test_check_alone_records_nothing() -> None:
    """Only accept() records a timestamp: a checked but refused request does not."""
    validator = RequestValidator(LIMITS)
    validator.check(_incoming(_request(frame_ts_us=100)))
    validator.check(_incoming(_request(frame_ts_us=100)))


def test_stream_table_is_bounded() -> None:
    """Beyond max_streams the least recently accepted stream is forgotten."""
    validator = RequestValidator(LIMITS)
    for name in ("a", "b", "c", "d"):
        validator.accept(_request(stream_id=name, frame_ts_us=100))
    assert len(validator._last_ts[("", b"")]) == LIMITS.max_streams
    validator.check(_incoming(_request(stream_id="a", frame_ts_us=1)))
    _rejected(validator, _incoming(_request(stream_id="b", frame_ts_us=1)))


def test_stream_table_keeps_recently_used_streams() -> None:
    """Accepting a frame of a stream makes it the most recent: it is evicted last."""
    validator = RequestValidator(LIMITS)
    for name, ts in (("a", 1), ("b", 1), ("c", 1), ("a", 2), ("d", 1)):
        validator.accept(_request(stream_id=name, frame_ts_us=ts))
    assert list(validator._last_ts[("", b"")]) == ["c", "a", "d"]


def test_a_stream_belongs_to_its_owner() -> None:
    """Another owner's frame on the same stream id neither is judged by nor moves the
    owner's timestamps: a frame far in the future from a stranger poisons nothing."""
    validator = RequestValidator(LIMITS)
    owner, stranger = ("uid:1/pid:10", b"a"), ("uid:1/pid:11", b"b")
    validator.accept(_request(frame_ts_us=100), owner=owner)
    validator.check(_incoming(_request(frame_ts_us=2**63 - 1)), owner=stranger)
    validator.accept(_request(frame_ts_us=2**63 - 1), owner=stranger)
    validator.check(_incoming(_request(frame_ts_us=101)), owner=owner)
    _rejected(validator, _incoming(_request(frame_ts_us=100)), owner=owner)


def test_owners_are_bounded() -> None:
    """Beyond max_owners the least recently active owner's streams are forgotten."""
    validator = RequestValidator(Limits(max_owners=2))
    for n in range(3):
        validator.accept(_request(frame_ts_us=100), owner=(f"p{n}", b""))
    assert list(validator._last_ts) == [("p1", b""), ("p2", b"")]


# -- mapping decode faults ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "diag"),
    [
        ("Expected `int` >= 1", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `int` <= 4096", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `float` > 0.0", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `float` < 1.0", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `str` of length <= 64", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `array` of length >= 1", DiagCode.RANGE_OR_SEQUENCE),
        ("Expected `int`, got `str`", DiagCode.SCHEMA_VIOLATION),
        ("Object missing required field `image`", DiagCode.SCHEMA_VIOLATION),
        ("Invalid value 'float64'", DiagCode.SCHEMA_VIOLATION),
        ("unknown schema id", DiagCode.SCHEMA_VIOLATION),
    ],
)
def test_classify_rule(rule: str, diag: DiagCode) -> None:
    """Range and length rules are DIA-2047; every other rule is DIA-2002."""
    assert classify_rule(rule) == diag


@pytest.mark.parametrize(
    ("what", "field", "rule", "diag", "out_field"),
    [
        ("framing", "$", "expected envelope and body frames", DiagCode.MALFORMED_FRAME, "$"),
        ("envelope", "", "MessagePack data is malformed", DiagCode.MALFORMED_FRAME, "$"),
        ("envelope", "", "Input data was truncated", DiagCode.MALFORMED_FRAME, "$"),
        ("envelope", "$[1]", "Expected `int` >= 0", DiagCode.RANGE_OR_SEQUENCE, "$[1]"),
        ("envelope", "$[0]", "Expected `str`, got `int`", DiagCode.SCHEMA_VIOLATION, "$[0]"),
        ("schema", "$.schema", "unknown schema id", DiagCode.SCHEMA_VIOLATION, "$.schema"),
        ("body", "$.image", "Object missing required field `shape`", DiagCode.SCHEMA_VIOLATION,
         "$.image"),
        ("body", "$.frame_ts_us", "Expected `int` >= 1", DiagCode.RANGE_OR_SEQUENCE,
         "$.frame_ts_us"),
    ],
)  # fmt: skip
def test_rejection_from_fault(
    what: str, field: str, rule: str, diag: DiagCode, out_field: str
) -> None:
    """Undecodable frames are DIA-2001; typed decode errors keep their field and class."""
    rejection = rejection_from_fault(FrameFault([b"c"], 4, what, field, rule))
    assert (rejection.diag, rejection.field, rejection.rule) == (diag, out_field, rule)


@pytest.mark.parametrize(
    "raw", [b"\xc1", b"\x93\x01", b"\x80\x80"], ids=["opcode", "short", "trail"]
)
def test_undecodable_body_is_a_malformed_frame(raw: bytes) -> None:
    """A body that is not valid MessagePack is DIA-2001, like an undecodable envelope."""
    channel = Channel(_NoSocket(), source="t")  # type: ignore[arg-type]
    envelope = msgspec.msgpack.encode(Envelope(schema="infer.request", seq=4, source="c"))
    with pytest.raises(FrameFault) as info:
        channel.decode([zmq.Frame(envelope), zmq.Frame(raw)])
    assert rejection_from_fault(info.value).diag == DiagCode.MALFORMED_FRAME


class _NoSocket:
    """Decoding never touches the socket."""
