"""Whatever a client sends, decoding and validating a request fails only with a typed fault."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.bus.channel import Channel, FrameFault
from vigil.nodes.ingest._validate import Limits, Rejection, RequestValidator
from vigil.schemas import SCHEMAS, InferRequest

pytestmark = pytest.mark.verifies("SR-ING-003")

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=16)
    | st.binary(max_size=16)
)
OBJECTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=12) | st.integers(-5, 5), children, max_size=6)
    ),
    max_leaves=40,
)
FIELD_NAMES = st.sampled_from(
    ["type", "stream_id", "frame_ts_us", "image", "model", "dtype", "shape", "buffer", "offset"]
)


@st.composite
def near_requests(draw: st.DrawFn) -> tuple[dict[str, Any], list[bytes]]:
    """A request body and its buffers that are valid but for a few drawn mutations, so the
    validator's own rules (shape, dtype, buffer size, sequence) are reached often."""
    height, width = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([3, 3, 3, 1, 4]))
    shape = draw(st.sampled_from([[height, width, channels]] * 3 + [[height, width], [1] * 4]))
    offset = draw(st.sampled_from([0, 0, 8]))
    image: dict[str, Any] = {
        "dtype": draw(st.sampled_from(["uint8", "uint8", "uint8", "float32", "float16"])),
        "shape": shape,
        "buffer": draw(st.sampled_from([0, 0, 0, 1])),
        "offset": offset,
    }
    body: dict[str, Any] = {
        "type": "infer.request",
        "stream_id": draw(st.sampled_from(["cam-1", "cam:2", "a.b_c"])),
        "frame_ts_us": draw(st.integers(1, 2**63 - 1)),
        "image": image,
    }
    size = offset + height * width * 3 + draw(st.sampled_from([0, 0, 0, -1, 1]))
    buffers = [bytes(max(size, 0))] * draw(st.sampled_from([1, 1, 1, 0, 2]))
    for key, value in draw(st.dictionaries(FIELD_NAMES, OBJECTS, max_size=2)).items():
        (image if key in image else body)[key] = value
    return body, buffers


BUFFERS = st.lists(st.binary(max_size=64) | st.integers(0, 2000).map(bytes), max_size=3)
SCHEMA_IDS = st.sampled_from(sorted(SCHEMAS))


@pytest.fixture(scope="module")
def channel() -> Iterator[Channel]:
    """A channel whose socket is never used: only its decoder is."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as socket:
        socket.setsockopt(zmq.LINGER, 0)
        yield Channel(socket, source="property")


def _envelope(schema: str = "infer.request") -> bytes:
    return msgspec.msgpack.encode([schema, 1, "client"])


def _decode_and_check(
    channel: Channel, frames: list[bytes], validator: RequestValidator
) -> InferRequest | None:
    """Run the ingest's decode path; only FrameFault and Rejection may come out."""
    try:
        validator.check_size([zmq.Frame(f) for f in frames])
        incoming = channel.decode([zmq.Frame(f) for f in frames])
        if incoming.envelope.schema == "infer.request":
            assert isinstance(incoming.body, InferRequest)
        request = validator.check(incoming)
    except (FrameFault, Rejection):
        return None
    assert isinstance(request, InferRequest)
    validator.accept(request)
    return request


@SETTINGS
@given(body=st.binary(max_size=256), buffers=BUFFERS)
def test_arbitrary_bytes_fail_only_with_typed_faults(
    channel: Channel, body: bytes, buffers: list[bytes]
) -> None:
    """Any bytes as a request body give a request, a FrameFault or a Rejection."""
    _decode_and_check(channel, [_envelope(), body, *buffers], RequestValidator(Limits()))


@SETTINGS
@given(body=OBJECTS, buffers=BUFFERS)
def test_arbitrary_messagepack_fails_only_with_typed_faults(
    channel: Channel, body: Any, buffers: list[bytes]
) -> None:
    """Any MessagePack value as a request body gives a request or a typed fault."""
    frames = [_envelope(), msgspec.msgpack.encode(body), *buffers]
    _decode_and_check(channel, frames, RequestValidator(Limits()))


@SETTINGS
@given(request=near_requests(), schema=SCHEMA_IDS | st.just("infer.request"))
def test_near_valid_requests_fail_only_with_typed_faults(
    channel: Channel, request: tuple[dict[str, Any], list[bytes]], schema: str
) -> None:
    """Request-shaped bodies under any schema id give a request or a typed fault."""
    body, buffers = request
    frames = [_envelope(schema), msgspec.msgpack.encode(body), *buffers]
    validator = RequestValidator(Limits(max_message_bytes=8192))
    if _decode_and_check(channel, frames, validator) is not None:
        # An accepted request replayed is refused by the per-stream sequence rule.
        with pytest.raises(Rejection) as info:
            validator.check(channel.decode([zmq.Frame(f) for f in frames]))
        assert info.value.field == "$.frame_ts_us"


@SETTINGS
@given(envelope=OBJECTS, body=OBJECTS)
def test_arbitrary_envelopes_fail_only_with_typed_faults(
    channel: Channel, envelope: Any, body: Any
) -> None:
    """Any MessagePack value as the envelope gives a request or a typed fault."""
    frames = [msgspec.msgpack.encode(envelope), msgspec.msgpack.encode(body)]
    _decode_and_check(channel, frames, RequestValidator(Limits()))


def test_valid_request_passes_decode_and_check() -> None:
    """A well-formed request with a matching buffer passes decode and every rule."""
    body = {
        "type": "infer.request",
        "stream_id": "cam",
        "frame_ts_us": 1,
        "image": {"dtype": "uint8", "shape": [2, 2, 3]},
    }
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as socket:
        socket.setsockopt(zmq.LINGER, 0)
        incoming = Channel(socket, source="p").decode(
            [zmq.Frame(_envelope()), zmq.Frame(msgspec.msgpack.encode(body)), zmq.Frame(bytes(12))]
        )
    assert RequestValidator(Limits()).check(incoming).stream_id == "cam"
