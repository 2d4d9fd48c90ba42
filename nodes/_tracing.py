"""Optional OpenTelemetry spans for the request path; a no-op where the SDK is not installed.

The ingest and the workers record a request's spans when its stages are over, with the times
they already keep, so nothing is held open and an unanswered request costs nothing here. The
spans keep the ids the bus already carries: a request's trace id is the client's, the ingest's
`ingest.request` span has the span id the ingest sends to the worker (and stamps on every
`LogRecord` about the request), and its parent is the client's span; the worker's
`worker.request` is a child of the ingest's. A batch is a span of its own trace, linked both
ways to the requests it served. A trace in the viewer, an entry in the sealed log and a message
in a bag then share one set of ids.

Export is switched on by the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) with the `otel` extra installed; by `VIGIL_OTEL_SPANS=DIR`,
which writes each process's spans as JSON lines to `DIR/<service>-<pid>.jsonl` (no collector
needed; read after the node stops); or by passing an exporter (tests pass the SDK's
`InMemorySpanExporter`). Everything else gets `RequestSpans`, whose methods do nothing. The SDK
is imported by name at run time so that the package type-checks the same with and without it;
its objects are handled as `Any` inside this module only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from vigil.bus.closing import Closing
from vigil.bus.envelope import TraceContext

__all__ = ["FILE_VAR", "RequestSpans", "otel_available", "request_spans"]

Attributes = Mapping[str, str | int | float | bool]

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
FILE_VAR = "VIGIL_OTEL_SPANS"


class RequestSpans(Closing):
    """Records finished spans of the request path; this base does nothing."""

    enabled = False

    def record(
        self,
        name: str,
        own: TraceContext,
        *,
        start_ns: int,
        end_ns: int,
        parent: TraceContext | None = None,
        attributes: Attributes | None = None,
        links: Sequence[TraceContext] = (),
        error: str = "",
        server: bool = False,
    ) -> None:
        """Export span `name` whose own context is `own`, from `start_ns` to `end_ns` (wall
        clock); `error` names the outcome of a span that ended in one."""

    def close(self) -> None:
        """Flush the exporter; idempotent."""


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

    def __init__(self, service: str, exporter: Any, owned: TextIO | None = None) -> None:
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
        # Batched export runs on the SDK's thread: the node loop never waits on a collector.
        self._provider.add_span_processor(export.BatchSpanProcessor(exporter))
        self._tracer: Any = self._provider.get_tracer("vigil")
        self._owned = owned
        self._closed = False

    def _context(self, trace: TraceContext) -> Any:
        api = self._api
        return api.SpanContext(
            trace_id=int.from_bytes(trace.trace_id),
            span_id=int.from_bytes(trace.span_id),
            is_remote=True,
            trace_flags=api.TraceFlags(trace.flags),
        )

    def record(
        self,
        name: str,
        own: TraceContext,
        *,
        start_ns: int,
        end_ns: int,
        parent: TraceContext | None = None,
        attributes: Attributes | None = None,
        links: Sequence[TraceContext] = (),
        error: str = "",
        server: bool = False,
    ) -> None:
        api = self._api
        context = None
        if parent is not None:
            context = api.set_span_in_context(api.NonRecordingSpan(self._context(parent)))
        self._ids.trace_id = int.from_bytes(own.trace_id)
        self._ids.span_id = int.from_bytes(own.span_id)
        span = self._tracer.start_span(
            name,
            context=context,
            kind=api.SpanKind.SERVER if server else api.SpanKind.INTERNAL,
            attributes=dict(attributes or {}),
            links=[api.Link(self._context(link)) for link in links],
            start_time=start_ns,
        )
        span.set_attribute("vigil.outcome", error or "OK")
        if error:
            span.set_status(api.Status(api.StatusCode.ERROR, error))
        span.end(end_time=max(start_ns, end_ns))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._provider.shutdown()
        if self._owned is not None:
            self._owned.close()


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


def _file_spans(service: str, folder: str) -> RequestSpans:
    """Spans written as JSON lines (the SDK's own span JSON, one per line) to a file of this
    process in `folder`."""
    export: Any = importlib.import_module("opentelemetry.sdk.trace.export")
    path = Path(folder) / f"{service}-{os.getpid()}.jsonl"
    out = path.open("a", encoding="utf-8")
    exporter = export.ConsoleSpanExporter(
        out=out, formatter=lambda span: span.to_json(indent=None) + "\n"
    )
    return _OtelSpans(service, exporter, owned=out)


def request_spans(service: str, *, exporter: Any = None) -> RequestSpans:
    """Spans for `service`: exported to `exporter`, to the files of `$VIGIL_OTEL_SPANS`, or
    over OTLP where an endpoint is configured and the SDK installed; otherwise the no-op
    `RequestSpans`."""
    try:
        if exporter is not None:
            return _OtelSpans(service, exporter)
        folder = os.environ.get(FILE_VAR)
        if folder:
            return _file_spans(service, folder)
        if any(os.environ.get(var) for var in _ENDPOINT_VARS):
            return _OtelSpans(service, _otlp_exporter())
    except ImportError:
        pass
    return RequestSpans()
