"""Request spans: exported with the bus's own ids when OpenTelemetry is there, no-op if not."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from vigil.bus.envelope import TraceContext
from vigil.nodes._tracing import FILE_VAR, RequestSpans, request_spans

START = 1_700_000_000_000_000_000


def test_without_exporter_or_endpoint_spans_are_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint configured: nothing is imported, recorded or exported."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv(FILE_VAR, raising=False)
    with request_spans("vigil.ingest") as spans:
        assert type(spans) is RequestSpans and not spans.enabled
        spans.record("ingest.request", TraceContext.new(), start_ns=START, end_ns=START + 1)


@pytest.fixture
def exporter() -> Any:
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    return memory.InMemorySpanExporter()


def test_a_request_span_keeps_the_bus_ids_times_and_outcome(exporter: Any) -> None:
    """The span's ids are the request's trace and the ingest's span; the parent is the client."""
    client = TraceContext.new()
    ingest = client.child()
    with request_spans("vigil.ingest", exporter=exporter) as spans:
        assert spans.enabled
        spans.record(
            "ingest.request",
            ingest,
            parent=client,
            start_ns=START,
            end_ns=START + 5000,
            attributes={"vigil.stream_id": "cam0"},
            server=True,
        )
    (span,) = exporter.get_finished_spans()
    assert span.context.trace_id == int.from_bytes(client.trace_id)
    assert span.context.span_id == int.from_bytes(ingest.span_id)
    assert span.parent is not None and span.parent.span_id == int.from_bytes(client.span_id)
    assert span.name == "ingest.request"
    assert span.attributes["vigil.stream_id"] == "cam0"
    assert span.attributes["vigil.outcome"] == "OK"
    assert span.resource.attributes["service.name"] == "vigil.ingest"
    assert (span.start_time, span.end_time) == (START, START + 5000)


def test_a_root_span_takes_the_trace_the_ingest_made_and_its_error(exporter: Any) -> None:
    """A request that came without a trace is exported under the one the ingest started."""
    trace = TraceContext.new()
    with request_spans("vigil.ingest", exporter=exporter) as spans:
        spans.record("ingest.request", trace, start_ns=START, end_ns=START, error="DEADLINE")
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.context.trace_id == int.from_bytes(trace.trace_id)
    assert span.context.span_id == int.from_bytes(trace.span_id)
    assert not span.status.is_ok
    assert span.status.description == "DEADLINE"


def test_links_name_the_linked_spans(exporter: Any) -> None:
    """A batch span links to the requests it served by their span contexts."""
    requests = [TraceContext.new() for _ in range(2)]
    with request_spans("vigil.worker", exporter=exporter) as spans:
        spans.record(
            "worker.batch", TraceContext.new(), start_ns=START, end_ns=START, links=requests
        )
    (span,) = exporter.get_finished_spans()
    assert [(link.context.trace_id, link.context.span_id) for link in span.links] == [
        (int.from_bytes(r.trace_id), int.from_bytes(r.span_id)) for r in requests
    ]


def test_the_file_export_writes_one_json_span_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With $VIGIL_OTEL_SPANS every span lands, on close, as a JSON line in this process's file."""
    pytest.importorskip("opentelemetry.sdk.trace")
    monkeypatch.setenv(FILE_VAR, str(tmp_path))
    trace = TraceContext.new()
    spans = request_spans("vigil.ingest")
    spans.record("ingest.request", trace, start_ns=START, end_ns=START + 1)
    spans.close()
    spans.close()
    (line,) = (tmp_path / f"vigil.ingest-{os.getpid()}.jsonl").read_text().splitlines()
    span = json.loads(line)
    assert span["name"] == "ingest.request"
    assert span["context"]["trace_id"] == "0x" + trace.trace_id.hex()
