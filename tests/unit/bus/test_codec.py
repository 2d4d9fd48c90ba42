"""Topic frames, envelopes, trace contexts and the schema evolution of every bus message."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from vigil.bus.codec import MAX_TOPIC_LENGTH, Codec, parse_topic_frame, topic_frame
from vigil.bus.envelope import Envelope, TraceContext
from vigil.schemas import (
    SCHEMAS,
    AuditEvent,
    AuditId,
    BatchEvidence,
    Box,
    BusProbe,
    DiagCode,
    DiagnosticEvent,
    EndedRequests,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferRequest,
    InferResult,
    LogCheckpoint,
    LogRecord,
    Message,
    ModelAction,
    ModelAnnouncement,
    ModelCommand,
    ModelEvent,
    ModelStep,
    NodeExit,
    NodeReady,
    Outcome,
    PerceptionOutput,
    RepliesDropped,
    RequestEvidence,
    SafetyState,
    Severity,
    StateChange,
    TensorRef,
    TracedEvidence,
    WorkerCredit,
    schema_id,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

# One instance of every message type, with every optional field set away from its default.
SAMPLES: dict[type[Message], Message] = {
    InferRequest: InferRequest(
        stream_id="cam-1",
        frame_ts_us=1_700_000_000_000_000,
        image=TensorRef(dtype="uint8", shape=(4, 6, 3), buffer=0, offset=8),
        model="ppocr-det",
    ),
    InferResult: InferResult(
        stream_id="cam-1",
        frame_ts_us=17,
        output=PerceptionOutput(
            confidence=0.75,
            timestamp_us=17,
            boxes=[
                Box(x_min=1.0, y_min=2.0, x_max=3.0, y_max=4.0, class_id=2, label="t", score=0.75)
            ],
        ),
        model="ppocr-det",
        version="4.0",
        worker="worker.1",
        batch_id=9,
        batch_size=2,
        queue_us=10,
        infer_us=20,
        degraded=True,
    ),
    ErrorReply: ErrorReply(
        code=ErrorCode.RESOURCE_EXHAUSTED,
        message="rate limit exceeded",
        field="$.tenant",
        rule="rate",
        retry_after_ms=100,
        diag_code=DiagCode.RATE_LIMITED,
        stream_id="cam-1",
        frame_ts_us=5,
    ),
    RepliesDropped: RepliesDropped(count=3, seqs=[7, 9, 12], diag_code=DiagCode.REPLY_DROPPED),
    Heartbeat: Heartbeat(
        node="ingest", instance=1, pid=42, period_ms=200, kind="ingest", detail={"a": "b"}
    ),
    StateChange: StateChange(
        state=SafetyState.DEGRADED,
        previous=SafetyState.NORMAL,
        cause="3 consecutive inference timeouts",
        since_ns=123,
        transitions=1,
        capacity=0.5,
        transitions_per_min=1,
    ),
    NodeExit: NodeExit(node="worker.1", kind="worker", pid=42, code=-9, restart_in_ms=100),
    DiagnosticEvent: DiagnosticEvent(
        code=DiagCode.SIZE_LIMIT,
        severity=Severity.WARNING,
        node="ingest",
        instance=2,
        message="too big",
        field="$.image",
        rule="size",
        stream_id="cam-1",
    ),
    AuditEvent: AuditEvent(event=AuditId.MODEL_VERIFIED, node="loader", instance=1, detail="ok"),
    LogCheckpoint: LogCheckpoint(
        store="log",
        store_id="00112233445566778899aabbccddeeff",
        size=42,
        start=1,
        note="vigil.log/00112233445566778899aabbccddeeff\n42\nAAAA\nstart 1\n\n",
    ),
    LogRecord: LogRecord(
        level="info",
        event="node.ready",
        node="worker",
        instance=1,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        fields={"n": 1, "f": 0.5, "s": "x", "b": True, "z": None},
    ),
    ModelEvent: ModelEvent(
        step=ModelStep.READY, name="m", version="1", node="worker", instance=1, detail="d"
    ),
    ModelAnnouncement: ModelAnnouncement(
        name="m",
        version="1",
        path="/models/m/1/model.onnx",
        sha256="a" * 64,
        size=1024,
        input_name="x",
        generation=3,
    ),
    ModelCommand: ModelCommand(
        action=ModelAction.PREPARE,
        generation=2,
        model=ModelAnnouncement(
            name="m", version="2", path="/models/m/2/model.onnx", sha256="b" * 64, size=2048
        ),
    ),
    NodeReady: NodeReady(
        name="ingest",
        instance=0,
        pid=7,
        kind="ingest",
        publishes=["diag/event"],
        subscribes=["safety/state"],
        endpoints={"frontend": "ipc:///tmp/x"},
    ),
    WorkerCredit: WorkerCredit(credit=8, model="m", version="1", pid=9, host="h"),
    BusProbe: BusProbe(node="worker.1", nonce=2**61),
    EndedRequests: EndedRequests(
        requests=[
            TracedEvidence(
                trace_id=bytes(range(16)),
                evidence=RequestEvidence(
                    outcome=Outcome.SERVED,
                    code="OK",
                    diag_code="DIA-2047",
                    peer="client.2",
                    tenant="acme",
                    stream_id="cam-1",
                    frame_ts_us=17,
                    model="m",
                    version="1",
                    worker="worker.1",
                    batch_id=9,
                    batch_size=2,
                    attempts=1,
                    received_ns=1_700_000_000_000_000_000,
                    admitted_us=3,
                    dispatched_us=5,
                    batch_start_us=40,
                    batch_end_us=900,
                    replied_us=950,
                    digest=bytes(range(32)),
                ),
            ),
            TracedEvidence(evidence=RequestEvidence(outcome=Outcome.REFUSED, code="UNAVAILABLE")),
        ]
    ),
    BatchEvidence: BatchEvidence(
        worker="worker.1",
        model="m",
        version="1",
        batch_id=9,
        size=2,
        infer_us=800,
        postprocess_us=60,
        failed=True,
    ),
}


def _envelope(**overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "schema": "infer.request",
        "seq": 7,
        "source": "client",
        "instance": 3,
        "stamp_ns": 11,
        "trace_id": bytes(range(16)),
        "span_id": bytes(range(8)),
        "trace_flags": 1,
        "deadline_wall_ns": 99,
        "priority": 5,
        "tenant": "acme",
        "session": 1234,
    }
    fields.update(overrides)
    return Envelope(**fields)


def _appended(cls: type[msgspec.Struct], **config: Any) -> type[msgspec.Struct]:
    """Version n+1 of `cls`: the same fields and one appended field with a default."""
    return msgspec.defstruct(
        f"{cls.__name__}Next",
        [("appended_in_next_version", list[int], msgspec.field(default_factory=lambda: [7]))],
        bases=(cls,),
        kw_only=True,
        frozen=True,
        **config,
    )


# -- topic frames -------------------------------------------------------------------------


def test_topic_frame_ends_in_nul() -> None:
    """A topic frame is the UTF-8 topic followed by one NUL."""
    assert topic_frame("infer/result") == b"infer/result\0"


def test_topic_frame_separates_a_topic_from_its_extensions() -> None:
    """`infer/res` is not a prefix of the frame of `infer/result`."""
    assert not topic_frame("infer/result").startswith(topic_frame("infer/res"))


@pytest.mark.parametrize("topic", ["", "a\0b", "\0", "x" * (MAX_TOPIC_LENGTH + 1)])
def test_topic_frame_refuses_invalid_names(topic: str) -> None:
    """Empty topics, topics holding a NUL and overlong topics are refused."""
    with pytest.raises(ValueError, match="invalid topic name"):
        topic_frame(topic)


def test_topic_frame_accepts_the_longest_topic() -> None:
    """A topic of exactly MAX_TOPIC_LENGTH characters is allowed."""
    assert len(topic_frame("x" * MAX_TOPIC_LENGTH)) == MAX_TOPIC_LENGTH + 1


@pytest.mark.parametrize("topic", ["health/heartbeat", "a", "ü/ß"])
def test_parse_topic_frame_inverts_topic_frame(topic: str) -> None:
    """Parsing a topic frame gives back its topic, from bytes or a memoryview."""
    frame = topic_frame(topic)
    assert parse_topic_frame(frame) == topic
    assert parse_topic_frame(memoryview(frame)) == topic


@pytest.mark.parametrize("frame", [b"", b"infer/result", b"\0infer"])
def test_parse_topic_frame_requires_the_nul(frame: bytes) -> None:
    """A frame without a trailing NUL is not a topic frame."""
    with pytest.raises(ValueError, match="NUL"):
        parse_topic_frame(frame)


def test_parse_topic_frame_refuses_invalid_utf8() -> None:
    """A topic frame that is not UTF-8 raises a ValueError (UnicodeDecodeError)."""
    with pytest.raises(ValueError):
        parse_topic_frame(b"\xff\xfe\0")


# -- envelopes ----------------------------------------------------------------------------


def test_envelope_round_trips() -> None:
    """Every envelope field survives encode and decode."""
    codec = Codec()
    envelope = _envelope()
    assert codec.decode_envelope(codec.encode(envelope)) == envelope


def test_envelope_travels_as_an_array() -> None:
    """The envelope is a MessagePack array with its fields in declaration order."""
    codec = Codec()
    items = codec.decode_any(codec.encode(_envelope()))
    assert isinstance(items, list)
    assert items[:3] == ["infer.request", 7, "client"]
    assert len(items) == len(Envelope.__struct_fields__)


def test_envelope_defaults_fill_a_short_array() -> None:
    """An envelope of only the required fields decodes with every default."""
    codec = Codec()
    decoded = codec.decode_envelope(msgspec.msgpack.encode(["x", 1, "src"]))
    assert decoded == Envelope(schema="x", seq=1, source="src")


@pytest.mark.parametrize(
    "items",
    [
        ["x", -1, "src"],
        ["x", 1, "s" * 65],
        ["x", 1, "src", 65536],
        ["x", 1, "src", 0, 0, bytes(17)],
        ["x", 1, "src", 0, 0, b"", b"", 0, 0, 8],
        ["x"],
    ],
)
def test_envelope_constraints_are_enforced(items: list[Any]) -> None:
    """Out-of-range, overlong and missing envelope fields fail validation."""
    with pytest.raises(msgspec.ValidationError):
        Codec().decode_envelope(msgspec.msgpack.encode(items))


def test_envelope_reader_skips_an_appended_element() -> None:
    """An envelope with one more trailing array element (version n+1) decodes as Envelope."""
    codec = Codec()
    envelope = _envelope()
    items = codec.decode_any(codec.encode(envelope))
    newer = msgspec.msgpack.encode([*items, {"added": [1, 2, 3]}])
    assert codec.decode_envelope(newer) == envelope


def test_envelope_reader_decodes_a_newer_envelope_type() -> None:
    """An envelope encoded by a v(n+1) Envelope type decodes with the v(n) type."""
    newer_type = _appended(Envelope, array_like=True)
    fields = msgspec.structs.asdict(_envelope())
    newer = newer_type(**fields)
    assert Codec().decode_envelope(msgspec.msgpack.encode(newer)) == _envelope()


# -- trace contexts -----------------------------------------------------------------------


def test_traceparent_parses() -> None:
    """A valid traceparent yields its trace id, span id and flags."""
    ctx = TraceContext.parse(f"00-{TRACE_ID}-{SPAN_ID}-01")
    assert ctx.trace_id == bytes.fromhex(TRACE_ID)
    assert ctx.span_id == bytes.fromhex(SPAN_ID)
    assert ctx.flags == 1


def test_traceparent_round_trips() -> None:
    """`parse(ctx.traceparent)` gives back the same context."""
    ctx = TraceContext.new()
    assert TraceContext.parse(ctx.traceparent) == ctx


def test_traceparent_ignores_surrounding_whitespace() -> None:
    """Whitespace around a header value is stripped."""
    assert TraceContext.parse(f"  00-{TRACE_ID}-{SPAN_ID}-00\n").flags == 0


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"01-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00-{TRACE_ID[:-2]}-{SPAN_ID}-01",
        f"00-{TRACE_ID}00-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID[:-2]}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-001",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
    ],
)
def test_traceparent_refuses_malformed_headers(header: str) -> None:
    """Wrong version, part count, id lengths, non-hex digits and all-zero ids are refused."""
    with pytest.raises(ValueError):
        TraceContext.parse(header)


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE_ID[:16]} {TRACE_ID[16:]}-{SPAN_ID}-01",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
    ],
)
def test_traceparent_refuses_anything_but_lowercase_hex(header: str) -> None:
    """Ids with spaces or upper-case digits are not valid traceparent ids."""
    with pytest.raises(ValueError):
        TraceContext.parse(header)


def test_child_span_keeps_trace_and_flags() -> None:
    """A child context shares trace id and flags and gets a new span id."""
    parent = TraceContext(bytes.fromhex(TRACE_ID), bytes.fromhex(SPAN_ID), 0)
    child = parent.child()
    assert (child.trace_id, child.flags) == (parent.trace_id, parent.flags)
    assert child.span_id != parent.span_id
    assert len(child.span_id) == 8


def test_new_trace_is_sampled() -> None:
    """A fresh trace has 16- and 8-byte ids and the sampled flag."""
    ctx = TraceContext.new()
    assert (len(ctx.trace_id), len(ctx.span_id), ctx.flags) == (16, 8, 1)


# -- message bodies and schema evolution --------------------------------------------------


def test_every_schema_has_a_sample() -> None:
    """The samples here cover every catalogued schema (a new schema needs one)."""
    assert {schema_id(cls) for cls in SAMPLES} == set(SCHEMAS)


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_message_round_trips(schema: str) -> None:
    """Every catalogued message decodes to an equal message under its schema id."""
    codec = Codec()
    sample = SAMPLES[SCHEMAS[schema]]
    assert codec.decode_body(schema, codec.encode(sample)) == sample


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_message_reader_decodes_the_next_version(schema: str) -> None:
    """A v(n) reader decodes a v(n+1) message that appends a field with a default."""
    cls = SCHEMAS[schema]
    sample = SAMPLES[cls]
    newer_type = _appended(cls, tag=schema)
    newer = newer_type(**msgspec.structs.asdict(sample))
    encoded = msgspec.msgpack.encode(newer)
    assert b"appended_in_next_version" in encoded
    assert Codec().decode_body(schema, encoded) == sample


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_message_carries_its_tag(schema: str) -> None:
    """Every encoded body names its schema in the `type` field."""
    codec = Codec()
    assert codec.decode_any(codec.encode(SAMPLES[SCHEMAS[schema]]))["type"] == schema


def test_body_under_the_wrong_schema_is_refused() -> None:
    """A body decoded under another message's schema id fails validation on its tag."""
    codec = Codec()
    with pytest.raises(msgspec.ValidationError, match=r"\$\.type"):
        codec.decode_body("infer.result", codec.encode(SAMPLES[InferRequest]))


def test_unknown_schema_raises_key_error() -> None:
    """Decoding a body under an unknown schema id raises KeyError."""
    with pytest.raises(KeyError):
        Codec().decode_body("no.such.schema", b"\x80")


def test_decode_any_needs_no_schema() -> None:
    """decode_any returns plain MessagePack values."""
    codec = Codec()
    assert codec.decode_any(msgspec.msgpack.encode({"a": [1, b"x"]})) == {"a": [1, b"x"]}
