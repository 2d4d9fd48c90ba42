"""Request spans: exported with the bus's own ids when OpenTelemetry is there, no-op if not."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.bus.envelope import TraceContext
from vigil.nodes._tracing import RequestSpans, request_spans


def test_without_exporter_or_endpoint_spans_are_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint configured: nothing is imported, started or exported."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    with request_spans("vigil.ingest") as spans:
        assert type(spans) is RequestSpans and not spans.enabled
        spans.start(1, TraceContext.new())
        spans.end(1)
        spans.end(2)


@pytest.fixture
def exporter() -> Any:
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    return memory.InMemorySpanExporter()


def test_a_request_span_keeps_the_bus_ids_and_its_outcome(exporter: Any) -> None:
    """The span's ids are the request's trace and the ingest's span; the parent is the client."""
    client = TraceContext.new()
    ingest = client.child()
    with request_spans("vigil.ingest", exporter=exporter) as spans:
        assert spans.enabled
        spans.start(7, ingest, parent=client, attributes={"vigil.stream_id": "cam0"})
        spans.end(7)
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == int.from_bytes(client.trace_id)
    assert span.context.span_id == int.from_bytes(ingest.span_id)
    assert span.parent is not None and span.parent.span_id == int.from_bytes(client.span_id)
    assert span.name == "ingest.request"
    assert span.attributes["vigil.stream_id"] == "cam0"
    assert span.attributes["vigil.outcome"] == "OK"
    assert span.resource.attributes["service.name"] == "vigil.ingest"
    assert span.end_time >= span.start_time


def test_a_root_span_takes_the_trace_the_ingest_made(exporter: Any) -> None:
    """A request that came without a trace is exported under the one the ingest started."""
    trace = TraceContext.new()
    with request_spans("vigil.ingest", exporter=exporter) as spans:
        spans.start(1, trace)
        spans.end(1, code="DEADLINE_EXCEEDED", error=True)
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id == int.from_bytes(trace.trace_id)
    assert span.context.span_id == int.from_bytes(trace.span_id)
    assert not span.status.is_ok
    assert span.status.description == "DEADLINE_EXCEEDED"


def test_closing_ends_what_is_still_open(exporter: Any) -> None:
    """A span never answered is still exported, marked unfinished."""
    spans = request_spans("vigil.ingest", exporter=exporter)
    spans.start(3, TraceContext.new())
    spans.close()
    spans.close()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["vigil.outcome"] == "UNFINISHED"
