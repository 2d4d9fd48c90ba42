"""The pieces of `vigil topic` that need no bus: filters, typed values, tensor summaries."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.bus.envelope import Envelope
from vigil.bus.pubsub import Received
from vigil.schemas import DiagnosticEvent, Topic
from vigil.tools._expr import ExpressionError, compile_filter
from vigil.tools._taps import SubscriptionWatch, summarise_tensors
from vigil.tools.topic_cmd import MessageValueError, _echo_row, decode_value, schema_summary

RESULT = {
    "stream_id": "cam0",
    "output": {"confidence": 0.7, "boxes": [{"score": 0.7, "label": "text"}]},
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("m.output.confidence > 0.5", True),
        ("m.output.confidence > 0.5 and m.stream_id == 'cam1'", False),
        ("m.stream_id in ['cam0', 'cam2'] or False", True),
        ("not m.output.boxes[0].score < 0.6", True),
        ("len(m.output.boxes) == 1 and abs(-m.output.confidence) >= 0.7", True),
        ("m['output']['confidence'] * 2 - 0.4 > 0.99", True),
        ("0.5 < m.output.confidence <= 0.7", True),
        ("m.output.label is None", False),
    ],
)
def test_filters_read_the_message(expression: str, expected: bool) -> None:
    """Comparisons, boolean operators, field and index access evaluate over the body."""
    assert compile_filter(expression)(m=RESULT, e={}, topic=Topic.INFER_RESULT) is expected


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "may be called"),
        ("m.__class__", "'_'"),
        ("open('/etc/passwd')", "may be called"),
        ("[x for x in m]", "ListComp"),
        ("lambda: 1", "Lambda"),
        ("x > 1", "unknown name 'x'"),
        ("m.a[1:2]", "slices"),
        ("2 ** 100000", "only + - * / %"),
        ("m.output.confidence >", "invalid syntax"),
    ],
)
def test_filters_outside_the_whitelist_are_refused(expression: str, reason: str) -> None:
    """Anything but reading the message is refused at compile time with the reason."""
    with pytest.raises(ExpressionError) as caught:
        compile_filter(expression)
    assert reason in caught.value.reason


def test_a_missing_field_does_not_match_and_is_counted() -> None:
    """A message without the field does not match; the filter says why."""
    keep = compile_filter("m.output.missing > 1")
    assert not keep(m=RESULT, e={}, topic="t")
    assert keep.skipped == 1 and "missing" in keep.last_problem


def test_values_decode_into_the_topic_type() -> None:
    """YAML decodes into the catalogued type; the type tag may be left out."""
    text = "{code: DIA-2047, severity: ERROR, node: n, message: hi}"
    value = decode_value(Topic.DIAGNOSTIC, text)
    assert isinstance(value, DiagnosticEvent) and value.code == "DIA-2047"


@pytest.mark.parametrize(
    ("topic", "text", "path"),
    [
        (Topic.DIAGNOSTIC, "{code: DIA-2047, severity: LOUD, node: n}", "$.severity"),
        (Topic.HEARTBEAT, "{node: n, instance: -1, pid: 1, period_ms: 1}", "$.instance"),
        (Topic.HEARTBEAT, "[1, 2]", "$"),
        ("no/such", "{}", ""),
    ],
)
def test_bad_values_name_the_path(topic: str, text: str, path: str) -> None:
    """A bad value is a typed error naming the `$.path` msgspec reports."""
    with pytest.raises(MessageValueError) as caught:
        decode_value(topic, text)
    assert caught.value.path == path


def test_tensors_are_summarised_from_their_buffer() -> None:
    """A tensor reference becomes dtype, shape, min/max/mean of the bytes it points at."""
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    body = {"image": {"dtype": "uint8", "shape": [2, 4, 3], "buffer": 0, "offset": 8}}
    data = memoryview(b"\xff" * 8 + image.tobytes())
    summary = summarise_tensors(body, [data])["image"]
    assert (summary["min"], summary["max"], summary["mean"]) == (0.0, 23.0, 11.5)
    full = summarise_tensors(body, [data], full=True)["image"]
    assert full["data"] == image.tolist()
    short = summarise_tensors(body, [memoryview(b"\x00")])["image"]
    assert "error" in short


def test_subscriptions_count_prefixes_and_the_graph_floor() -> None:
    """A subscription to a prefix counts; the graph's count raises a merged one."""
    watch = SubscriptionWatch({Topic.HEARTBEAT: 3})
    assert watch.count(Topic.HEARTBEAT) == 0
    watch._events += [b"health/", Topic.INFER_RESULT.encode() + b"\0"]
    assert watch.count(Topic.HEARTBEAT) == 3
    assert watch.count(Topic.INFER_RESULT) == 1
    assert watch.count(Topic.INFER_ERROR) == 0


def test_schema_summary_lists_constraints() -> None:
    """`topic info` shows nested fields with their constraints."""
    lines = schema_summary(Topic.INFER_REQUEST)
    assert any(line.startswith("stream_id: string") and "maxLength 64" in line for line in lines)
    assert any(line.startswith("  dtype: enum(") for line in lines)


def test_a_value_outside_an_enum_is_refused_with_the_allowed_values() -> None:
    """`topic pub diag/event` with an unknown code names the codes there are."""
    with pytest.raises(MessageValueError) as info:
        decode_value(Topic.DIAGNOSTIC, "{code: DIA-9999, severity: error, node: n, message: m}")
    assert "Invalid enum value 'DIA-9999'; allowed: DIA-2001, DIA-2002" in str(info.value)
    assert info.value.path == "$.code"


def test_echo_field_reads_the_envelope_with_an_e_prefix() -> None:
    """`--field e.trace_id` is the envelope's trace id in hex, beside a body field."""
    trace = bytes(range(16))
    received = Received(
        topic=Topic.INFER_RESULT,
        envelope=Envelope(schema="infer.result", seq=7, source="ingest", trace_id=trace),
        body=RESULT,
        buffers=[],
        frames=[],
        size=0,
    )
    row = _echo_row(received, ("e.trace_id", "e.seq", "output.confidence"), full=False)
    assert row == {"e.trace_id": trace.hex(), "e.seq": 7, "output.confidence": 0.7}
