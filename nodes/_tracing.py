"""Optional OpenTelemetry spans for the request path; a no-op where the SDK is not installed.

The ingest opens a span when it admits a request and ends it when the request is answered —
with a result or a typed error — so a trace viewer shows the whole receive-to-reply time of
every request. The span keeps the ids the bus already carries: its trace id is the request's
and its span id is the ingest's own (the one in the envelope sent to the worker and in every
`LogRecord` about the request), its parent is the client's span. A trace in the viewer, a line
in the sealed log and a message in a bag then share one set of ids.

Export is switched on by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) with the `otel` extra installed, or by passing an exporter
(tests pass the SDK's `InMemorySpanExporter`). Everything else gets `RequestSpans`, whose methods
do nothing. The SDK is imported by name at run time so that the package type-checks the same
with and without it; its objects are handled as `Any` inside this module only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from vigil.bus.closing import Closing
from vigil.bus.envelope import TraceContext

__all__ = ["RequestSpans", "otel_available", "request_spans"]

Attributes = Mapping[str, str | int | float | bool]

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class RequestSpans(Closing):
    """Spans of in-flight requests, keyed by the caller's request id; this base does nothing."""

    enabled = False

    def start(
        self,
        key: int,
        trace: TraceContext,
        *,
        parent: TraceContext | None = None,
        name: str = "ingest.request",
        attributes: Attributes | None = None,
    ) -> None:
        """Open the span of request `key`, whose own context is `trace`."""

    def end(self, key: int, *, code: str = "OK", error: bool = False) -> None:
        """End the span of request `key` with its outcome; unknown keys are ignored."""

    def close(self) -> None:
        """End what is still open and flush the exporter; idempotent."""


class _PresetIds:
    """The SDK's id generator, told which ids the next span takes (the bus's, not new ones)."""

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        # Bus trace ids come from `secrets` (vigil.bus.envelope.new_trace_id).
        return True


class _OtelSpans(RequestSpans):
    enabled = True

    def __init__(self, service: str, exporter: Any) -> None:
        api: Any = importlib.import_module("opentelemetry.trace")
        sdk: Any = importlib.import_module("opentelemetry.sdk.trace")
        export: Any = importlib.import_module("opentelemetry.sdk.trace.export")
        resources: Any = importlib.import_module("opentelemetry.sdk.resources")
        self._api = api
        self._ids = _PresetIds()
        # A provider of our own, not the global one: the node owns it and shuts it down.
        self._provider: Any = sdk.TracerProvider(
            resource=resources.Resource.create({"service.name": service}),
            id_generator=self._ids,
        )
        # Batched export runs on the SDK's thread: the ingest loop never waits on a collector.
        self._provider.add_span_processor(export.BatchSpanProcessor(exporter))
        self._tracer: Any = self._provider.get_tracer("vigil.ingest")
        self._open: dict[int, Any] = {}
        self._closed = False

    def start(
        self,
        key: int,
        trace: TraceContext,
        *,
        parent: TraceContext | None = None,
        name: str = "ingest.request",
        attributes: Attributes | None = None,
    ) -> None:
        api = self._api
        context = None
        if parent is not None:
            remote = api.SpanContext(
                trace_id=int.from_bytes(parent.trace_id),
                span_id=int.from_bytes(parent.span_id),
                is_remote=True,
                trace_flags=api.TraceFlags(parent.flags),
            )
            context = api.set_span_in_context(api.NonRecordingSpan(remote))
        self._ids.trace_id = int.from_bytes(trace.trace_id)
        self._ids.span_id = int.from_bytes(trace.span_id)
        self._open[key] = self._tracer.start_span(
            name, context=context, kind=api.SpanKind.SERVER, attributes=dict(attributes or {})
        )

    def end(self, key: int, *, code: str = "OK", error: bool = False) -> None:
        span = self._open.pop(key, None)
        if span is None:
            return
        span.set_attribute("vigil.outcome", code)
        if error:
            span.set_status(self._api.Status(self._api.StatusCode.ERROR, code))
        span.end()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for key in list(self._open):
            self.end(key, code="UNFINISHED", error=True)
        self._provider.shutdown()


def otel_available() -> bool:
    """Whether the OpenTelemetry SDK can be imported."""
    try:
        importlib.import_module("opentelemetry.sdk.trace")
    except ImportError:
        return False
    return True


def _otlp_exporter() -> Any:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    module = (
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
        if protocol == "grpc"
        else "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    )
    # The exporter reads its endpoint, headers and timeouts from the standard variables.
    return importlib.import_module(module).OTLPSpanExporter()


def request_spans(service: str, *, exporter: Any = None) -> RequestSpans:
    """Spans for `service`: exported to `exporter`, or over OTLP where an endpoint is
    configured and the SDK installed; otherwise the no-op `RequestSpans`."""
    if exporter is None and not any(os.environ.get(var) for var in _ENDPOINT_VARS):
        return RequestSpans()
    try:
        return _OtelSpans(service, exporter if exporter is not None else _otlp_exporter())
    except ImportError:
        return RequestSpans()
