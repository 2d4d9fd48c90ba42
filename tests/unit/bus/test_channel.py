"""Point-to-point framing: validation paths, typed decode faults and sequence recovery."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator

import msgspec
import pytest
import zmq

from vigil.bus.channel import (
    Channel,
    FrameFault,
    _peek_seq,
    allowed_values,
    split_identity,
    validation_path,
)
from vigil.bus.envelope import Envelope, TraceContext
from vigil.schemas import DiagCode, DiagnosticEvent, InferRequest, TensorRef, WorkerCredit

pytestmark = pytest.mark.verifies("SR-ING-003")

REQUEST = InferRequest(
    stream_id="cam-1", frame_ts_us=10, image=TensorRef(dtype="uint8", shape=(2, 2, 3))
)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    """A context that outlives every socket of the test."""
    with zmq.Context() as context:
        yield context


@pytest.fixture
def channel(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Channel]:
    """A channel on an unconnected DEALER (decode never touches the socket)."""
    with ctx.socket(zmq.DEALER) as socket:
        socket.setsockopt(zmq.LINGER, 0)
        yield Channel(socket, source="test", clock=lambda: 123)


@pytest.fixture
def router(ctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Channel]:
    """A routed channel on an unbound ROUTER."""
    with ctx.socket(zmq.ROUTER) as socket:
        socket.setsockopt(zmq.LINGER, 0)
        yield Channel(socket, source="router", routed=True)


def _frames(*parts: bytes) -> list[zmq.Frame]:
    return [zmq.Frame(p) for p in parts]


def _encode(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def _fault(channel: Channel, *parts: bytes) -> FrameFault:
    with pytest.raises(FrameFault) as info:
        channel.decode(_frames(*parts))
    return info.value


# -- validation_path ----------------------------------------------------------------------


def test_validation_path_splits_path_and_rule() -> None:
    """A ValidationError splits into its `$.path` and the rule before it."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"credit": -1}, WorkerCredit)
    assert validation_path(info.value) == ("$.credit", "Expected `int` >= 0")


def test_validation_path_keeps_nested_paths() -> None:
    """Nested fields and array indices stay in the path."""
    body = {"type": "infer.request", "stream_id": "s", "frame_ts_us": 1}
    body["image"] = {"dtype": "uint8", "shape": [1, 0, 3]}
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(body, InferRequest)
    assert validation_path(info.value) == ("$.image.shape[1]", "Expected `int` >= 1")


def test_validation_path_lists_the_values_of_an_enum() -> None:
    """A value outside an enum is refused with the values the enum allows."""
    body = {"code": "DIA-9999", "severity": "error", "node": "n", "message": "m"}
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(body, DiagnosticEvent)
    path, rule = validation_path(info.value, DiagnosticEvent)
    assert path == "$.code"
    assert rule.startswith("Invalid enum value 'DIA-9999'; allowed: ")
    assert rule.split("allowed: ")[1].split(", ") == [c.value for c in DiagCode]


def test_validation_path_lists_a_literal_in_a_nested_struct() -> None:
    """A literal inside a nested struct is found through the path msgspec reports."""
    body = {"type": "infer.request", "stream_id": "s", "frame_ts_us": 1}
    body["image"] = {"dtype": "int7", "shape": [1, 1, 3]}
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(body, InferRequest)
    assert validation_path(info.value, InferRequest) == (
        "$.image.dtype",
        "Invalid enum value 'int7'; allowed: float16, float32, uint8",
    )


def test_validation_path_adds_nothing_to_other_rules() -> None:
    """A range error says only its rule, even given the type."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"credit": -1}, WorkerCredit)
    assert validation_path(info.value, WorkerCredit) == ("$.credit", "Expected `int` >= 0")


@pytest.mark.parametrize(
    ("path", "values"),
    [("$.code", [c.value for c in DiagCode]), ("$.node", None), ("$.nowhere[3]", None)],
)
def test_allowed_values_follow_the_path(path: str, values: list[str] | None) -> None:
    """Only an enum or literal field has allowed values; other or unknown paths have none."""
    assert allowed_values(DiagnosticEvent, path) == values


def test_validation_path_of_a_root_error_is_empty() -> None:
    """An error without a location gives an empty path and the whole message as rule."""
    with pytest.raises(msgspec.DecodeError) as info:
        msgspec.msgpack.decode(b"\xc1")
    path, rule = validation_path(info.value)
    assert path == ""
    assert rule == str(info.value)


def test_validation_path_keeps_backticks_in_the_rule() -> None:
    """Backticks inside the rule (type names) are not taken for the path."""
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({"credit": "x"}, WorkerCredit)
    assert validation_path(info.value) == ("$.credit", "Expected `int`, got `str`")


# -- decode -------------------------------------------------------------------------------


def test_decode_returns_envelope_body_and_buffers(channel: Channel) -> None:
    """Well-formed frames decode into the envelope, the typed body and the tensor buffers."""
    envelope = channel.envelope(REQUEST)
    incoming = channel.decode(
        _frames(channel.encode(envelope), channel.encode(REQUEST), b"tensor", b"more")
    )
    assert incoming.identity == []
    assert incoming.envelope == envelope
    assert incoming.body == REQUEST
    assert [b.bytes for b in incoming.buffers] == [b"tensor", b"more"]


def test_routed_decode_splits_the_identity(router: Channel) -> None:
    """On a ROUTER the first frame is the identity of the sender."""
    incoming = router.decode(
        _frames(b"client-7", router.encode(router.envelope(REQUEST)), router.encode(REQUEST))
    )
    assert incoming.identity == [b"client-7"]
    assert incoming.body == REQUEST


def test_split_identity_takes_the_first_frame() -> None:
    """The identity is the first frame; the message is the rest."""
    identity, rest = split_identity(_frames(b"id", b"env", b"body"))
    assert identity == [b"id"]
    assert [f.bytes for f in rest] == [b"env", b"body"]


@pytest.mark.parametrize("count", [0, 1])
def test_missing_frames_are_a_framing_fault(channel: Channel, count: int) -> None:
    """Fewer than an envelope and a body is a framing fault at `$` with seq 0."""
    fault = _fault(channel, *[channel.encode(channel.envelope(REQUEST))][:count])
    assert (fault.what, fault.field, fault.seq, fault.identity) == ("framing", "$", 0, [])


def test_routed_missing_frames_keep_the_identity(router: Channel) -> None:
    """A routed framing fault still names the sender, so the rejection can be routed."""
    fault = _fault(router, b"client-7", b"\x90")
    assert (fault.what, fault.identity) == ("framing", [b"client-7"])


def test_garbage_envelope_is_an_envelope_fault(channel: Channel) -> None:
    """An envelope that is not MessagePack is an envelope fault with seq 0."""
    fault = _fault(channel, b"\xc1\xc1", channel.encode(REQUEST))
    assert (fault.what, fault.field, fault.seq) == ("envelope", "", 0)
    assert "malformed" in fault.rule


def test_invalid_envelope_names_the_field_and_keeps_the_seq(channel: Channel) -> None:
    """An envelope that breaks a constraint names its `$[index]` and keeps a readable seq."""
    fault = _fault(channel, _encode(["infer.request", 42, "s" * 65]), channel.encode(REQUEST))
    assert (fault.what, fault.field, fault.seq) == ("envelope", "$[2]", 42)
    assert fault.rule == "Expected `str` of length <= 64"


def test_unknown_schema_is_a_schema_fault(channel: Channel) -> None:
    """An envelope naming no catalogued schema is a schema fault at `$.schema`."""
    fault = _fault(channel, _encode(["no.such", 5, "client"]), channel.encode(REQUEST))
    assert (fault.what, fault.field, fault.seq) == ("schema", "$.schema", 5)
    assert fault.rule == "unknown schema id"


def test_invalid_body_names_the_field(channel: Channel) -> None:
    """A body that breaks its schema is a body fault naming field and rule."""
    body = _encode(
        {"type": "infer.request", "stream_id": "s", "frame_ts_us": 0, "image": REQUEST.image}
    )
    fault = _fault(channel, _encode(["infer.request", 6, "client"]), body)
    assert (fault.what, fault.field, fault.seq) == ("body", "$.frame_ts_us", 6)
    assert fault.rule == "Expected `int` >= 1"


def test_garbage_body_is_a_body_fault(channel: Channel) -> None:
    """A body that is not MessagePack is a body fault at the root."""
    fault = _fault(channel, _encode(["infer.request", 8, "client"]), b"\xc1")
    assert (fault.what, fault.field, fault.seq) == ("body", "$", 8)


def test_body_of_another_schema_is_a_body_fault(channel: Channel) -> None:
    """A body whose tag differs from the envelope's schema fails at `$.type`."""
    credit = WorkerCredit(credit=1)
    fault = _fault(channel, _encode(["infer.request", 9, "client"]), channel.encode(credit))
    assert (fault.what, fault.field, fault.seq) == ("body", "$.type", 9)


def test_frame_fault_message_names_what_field_and_rule() -> None:
    """str(FrameFault) reads `what: rule at field`."""
    assert str(FrameFault([], 1, "body", "$.x", "bad")) == "body: bad at $.x"


def test_deeply_nested_body_is_a_body_fault(channel: Channel) -> None:
    """A body nested deeper than the decoder allows is a body fault, not a RecursionError."""
    # An unknown field (skipped by the typed decoder) holding 100 000 nested arrays: ~100 kB.
    body = b"\x82\xa4type\xadinfer.request\xa1z" + b"\x91" * 100_000 + b"\xc0"
    fault = _fault(channel, _encode(["infer.request", 3, "client"]), body)
    assert (fault.what, fault.seq) == ("body", 3)


def test_deeply_nested_envelope_is_an_envelope_fault(channel: Channel) -> None:
    """An envelope with a deeply nested trailing element is an envelope fault."""
    fields = _encode(["infer.request", 3, "c", 0, 0, b"", b"", 0, 0, 0, "", 0])
    assert fields[0] == 0x9C  # a 12-element array: make it 13, the last one nested
    envelope = b"\x9d" + fields[1:] + b"\x91" * 100_000 + b"\xc0"
    fault = _fault(channel, envelope, channel.encode(REQUEST))
    assert fault.what == "envelope"


def _bomb(count: int) -> bytes:
    """A request body whose first field has the wrong type and holds `count` empty arrays:
    cheap for a decoder that only walks it, gigabytes for one that builds it."""
    return b"\x81\xa9stream_id\xdd" + count.to_bytes(4, "big") + b"\x90" * count


def _peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_body_bomb_is_classified_without_building_it(channel: Channel) -> None:
    """Telling a type error from broken framing walks the bytes once and builds nothing:
    6.2 million empty arrays cost kilobytes, not the hundreds of MiB a second decode would."""
    envelope = _encode(["infer.request", 4, "client"])
    body = _bomb(6_200_000)

    def classify() -> FrameFault:
        return _fault(channel, envelope, body)

    assert _peak_bytes(classify) < 1 << 20
    fault = classify()
    assert (fault.what, fault.field) == ("body", "$.stream_id")  # well formed: a type error
    broken = _fault(channel, envelope, body[:-1])
    assert (broken.what, broken.field) == ("body", "$")  # truncated: framing
    assert isinstance(broken.__cause__, msgspec.DecodeError)


def test_a_map_of_a_million_keys_is_classified_without_building_it(channel: Channel) -> None:
    """A body whose type error comes first and a million distinct keys after costs no dict
    of a million entries: its fault is classified by one walk over the bytes."""
    keys = b"".join(b"\xce" + n.to_bytes(4, "big") + b"\xc0" for n in range(1_000_000))
    body = b"\xdf" + (1_000_001).to_bytes(4, "big") + b"\xa9stream_id\x90" + keys
    envelope = _encode(["infer.request", 5, "client"])
    assert _peak_bytes(lambda: _fault(channel, envelope, body)) < 1 << 20
    assert _fault(channel, envelope, body).field == "$.stream_id"


def test_an_envelope_bomb_yields_its_seq_without_building_it() -> None:
    """Recovering the sequence number of a malformed envelope reads two items, not the rest."""
    # A schema id of the wrong type, then 6.2 million empty arrays.
    envelope = b"\xdd" + (6_200_002).to_bytes(4, "big") + _encode(123) + _encode(9)
    envelope += b"\x90" * 6_200_000
    assert _peak_bytes(lambda: _peek_seq(zmq.Frame(envelope))) < 1 << 20
    assert _peek_seq(zmq.Frame(envelope)) == 9


# -- _peek_seq ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seq"),
    [
        (_encode(["x", 17, "s" * 100]), 17),
        (_encode([None, 3]), 3),
        (_encode(["x", -4]), 0),
        (_encode(["x", "17"]), 0),
        (_encode(["x"]), 0),
        (_encode([]), 0),
        (_encode({"seq": 5}), 0),
        (b"\xc1", 0),
        (b"", 0),
    ],
    ids=["valid", "bad-schema", "negative", "string", "short", "empty", "map", "garbage", "none"],
)
def test_peek_seq_recovers_what_it_can(raw: bytes, seq: int) -> None:
    """The second array element is the seq when it is a non-negative int, else 0."""
    assert _peek_seq(zmq.Frame(raw)) == seq


# -- envelope building and a real round trip ----------------------------------------------


def test_envelope_numbers_and_stamps(channel: Channel) -> None:
    """Envelopes carry the schema id, the next seq, the source and the injected clock."""
    first, second = channel.envelope(REQUEST), channel.envelope(InferRequest)
    assert (first.schema, first.seq, first.source, first.stamp_ns) == (
        "infer.request",
        1,
        "test",
        123,
    )
    assert second.seq == 2


def test_envelope_carries_the_trace(channel: Channel) -> None:
    """A trace context fills the envelope's trace fields."""
    trace = TraceContext.new()
    envelope = channel.envelope(REQUEST, seq=99, trace=trace, deadline_wall_ns=5, priority=7)
    assert (envelope.seq, envelope.trace_id, envelope.span_id, envelope.trace_flags) == (
        99,
        trace.trace_id,
        trace.span_id,
        1,
    )
    assert (envelope.deadline_wall_ns, envelope.priority) == (5, 7)


def test_send_and_recv_between_dealer_and_router(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """A message sent by a DEALER channel arrives at a ROUTER channel with its identity."""
    with ctx.socket(zmq.ROUTER) as rsock, ctx.socket(zmq.DEALER) as dsock:
        for sock in (rsock, dsock):
            sock.setsockopt(zmq.LINGER, 0)
        dsock.setsockopt(zmq.IDENTITY, b"client-1")
        rsock.bind("inproc://channel-test")
        dsock.connect("inproc://channel-test")
        client = Channel(dsock, source="client")
        server = Channel(rsock, source="server", routed=True)
        sent = client.send(REQUEST, buffers=[b"\x01" * 12])
        assert rsock.poll(10_000)
        incoming = server.recv()
        server.send(WorkerCredit(credit=1), identity=incoming.identity)
        assert dsock.poll(10_000)
        reply = client.recv()
    assert incoming.identity == [b"client-1"]
    assert incoming.envelope == sent
    assert incoming.body == REQUEST
    assert incoming.buffers[0].bytes == b"\x01" * 12
    assert reply.body == WorkerCredit(credit=1)


def test_envelope_of_a_channel_decodes(channel: Channel) -> None:
    """An envelope built by a channel is a valid Envelope on the wire."""
    raw = channel.encode(channel.envelope(REQUEST, tenant="acme"))
    assert msgspec.msgpack.decode(raw, type=Envelope).tenant == "acme"
