"""The metrics node: one Prometheus endpoint for the whole running system, fed over the bus.

Every node already publishes what an operator wants to graph — each request's evidence when
it ends, each batch's when it ran, typed errors, diagnostics, heartbeats, audit events, the
safety state — so this node only listens (to every topic but the requests themselves, see
`COUNTED`) and keeps the counts. Nothing on the request path knows it exists, and a scrape
never reaches another process. Histograms carry exemplars (the request's trace id) in the
OpenMetrics exposition, which the endpoint serves to a scraper that asks for it.
`docs/metrics.md` lists every metric.

Values that only make sense at the moment of a scrape (the age of each node's last heartbeat,
the per-topic message and loss counts of this node's own subscriber) come from a collector
that reads them under a lock when Prometheus asks.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from vigil.bus.pubsub import Received, Subscriber
from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.metrics._contract import COUNTED, KIND, MetricsConfig
from vigil.schemas import (
    TOPICS,
    AuditEvent,
    AuditId,
    BatchEvidence,
    DiagCode,
    DiagnosticEvent,
    EndedRequests,
    ErrorCode,
    ErrorReply,
    Heartbeat,
    InferResult,
    ModelAnnouncement,
    Outcome,
    RequestEvidence,
    SafetyState,
    StateChange,
)

__all__ = ["BusMetrics", "run", "serve"]

_BURST = 1024

# Inference on an edge target runs from under a millisecond (a small CPU model) to seconds (a
# cold GPU); queueing is shorter. Batches are powers of two up to the largest worker setting.
_INFER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# A request end to end: from a refusal in microseconds to a deadline of tens of seconds.
_REQUEST_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

RESULT_CODE = "OK"


@dataclass(slots=True)
class _Live:
    """What the scrape-time collector reads; guarded by `lock` against the node loop."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    beats: dict[str, int] = field(default_factory=dict)
    subscriber: Subscriber | None = None


class _LiveCollector(Collector):
    """Heartbeat ages and this node's own per-topic counts, computed when Prometheus asks."""

    def __init__(self, live: _Live, clock: Callable[[], int]) -> None:
        self._live = live
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        ages = GaugeMetricFamily(
            "vigil_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat reached the metrics node.",
            labels=["node"],
        )
        messages = CounterMetricFamily(
            "vigil_topic_messages",
            "Messages the metrics node received on each topic.",
            labels=["topic"],
        )
        lost = CounterMetricFamily(
            "vigil_topic_lost",
            "Messages lost on each topic before the metrics node (publisher sequence gaps).",
            labels=["topic"],
        )
        now = self._clock()
        counts: dict[str, tuple[int, int]] = dict.fromkeys(TOPICS, (0, 0))
        with self._live.lock:
            beats = list(self._live.beats.items())
            sub = self._live.subscriber
            if sub is not None:
                counts.update((t, (s.messages, s.lost)) for t, s in sub.stats.items())
        for node, seen in sorted(beats):
            ages.add_metric([node], max(0, now - seen) / 1e9)
        for topic, (received, gaps) in sorted(counts.items()):
            messages.add_metric([topic], received)
            lost.add_metric([topic], gaps)
        yield ages
        yield messages
        yield lost

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would call collect() at registration to learn the
        # names; an empty family per name is all it needs.
        yield GaugeMetricFamily("vigil_heartbeat_age_seconds", "", labels=["node"])
        yield CounterMetricFamily("vigil_topic_messages", "", labels=["topic"])
        yield CounterMetricFamily("vigil_topic_lost", "", labels=["topic"])


class BusMetrics:
    """The registry of the whole system's metrics and the bus messages that move them.

    `observe()` is called from the node loop for every message received; the HTTP server reads
    the registry from its own threads (prometheus_client's metrics are thread-safe, and the
    collector above takes `_Live.lock`).
    """

    def __init__(self, clock: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self.live = _Live()
        reg = self.registry
        self.inference = Histogram(
            "vigil_inference_duration_seconds",
            "Pre-processing and inference of one batch, observed once per batch.",
            ["model", "version"],
            buckets=_INFER_BUCKETS,
            registry=reg,
        )
        self.postprocess = Histogram(
            "vigil_postprocess_duration_seconds",
            "Post-processing of one batch's outputs, observed once per batch.",
            ["model", "version"],
            buckets=_INFER_BUCKETS,
            registry=reg,
        )
        self.queue_time = Histogram(
            "vigil_queue_time_seconds",
            "Time a request waited in a worker before its batch ran, per result.",
            buckets=_QUEUE_BUCKETS,
            registry=reg,
        )
        self.dispatch_wait = Histogram(
            "vigil_dispatch_wait_seconds",
            "Time a request waited before its worker read it: queued in the ingest, or in the"
            " worker's socket buffer.",
            ["stage"],
            buckets=_QUEUE_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "vigil_batch_size",
            "Requests per inference batch, observed once per batch.",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.background_batches = Counter(
            "vigil_background_batches",
            "Inference batches run at background CPU priority (of peers beyond their share).",
            registry=reg,
        )
        self.request_duration = Histogram(
            "vigil_request_duration_seconds",
            "A request from its arrival at the ingest to its answer, by outcome (served, "
            "refused, failed) and model; exemplars carry the trace id.",
            ["outcome", "model"],
            buckets=_REQUEST_BUCKETS,
            registry=reg,
        )
        self.model_active = Gauge(
            "vigil_model_active_info",
            "The model version the loader committed: 1 for the active one.",
            ["model", "version"],
            registry=reg,
        )
        self.requests = Counter(
            "vigil_requests_total",
            "Requests answered, by outcome and error code (OK for a result).",
            ["outcome", "code"],
            registry=reg,
        )
        self.rejections = Counter(
            "vigil_rejections_total",
            "Diagnostics the ingest raised on refusing or failing a request, by diagnostic code.",
            ["reason"],
            registry=reg,
        )
        self.rate_limit = Counter(
            "vigil_rate_limit_decisions_total",
            "Rate-limiter decisions of every ingest.",
            ["decision"],
            registry=reg,
        )
        self.restarts = Counter(
            "vigil_node_restarts_total",
            "Restarts of each node by the launcher.",
            ["node"],
            registry=reg,
        )
        self.safety_state = Gauge(
            "vigil_safety_state",
            "The watchdog's safety state: 1 for the current state, 0 for the others.",
            ["state"],
            registry=reg,
        )
        self.commit_latency = Gauge(
            "vigil_log_commit_latency_seconds",
            "Append-to-durable latency of the log store's most recent group commit.",
            registry=reg,
        )
        self.commit_latency_max = Gauge(
            "vigil_log_commit_latency_max_seconds",
            "Largest append-to-durable latency of the log store since the logger started.",
            registry=reg,
        )
        reg.register(_LiveCollector(self.live, clock))
        # Every label set known in advance is exported at zero from the first scrape, so a
        # rate() over the first minutes of a run has a starting point.
        self.requests.labels(outcome="result", code=RESULT_CODE)
        for code in ErrorCode:
            self.requests.labels(outcome="error", code=code.value)
        for diag in DiagCode:
            self.rejections.labels(reason=diag.value)
        for decision in ("allowed", "refused"):
            self.rate_limit.labels(decision=decision)
        for stage in ("ingest_queue", "socket"):
            self.dispatch_wait.labels(stage=stage)
        for state in SafetyState:
            self.safety_state.labels(state=state.value)
        self._kinds: dict[str, str] = {}
        self._rate_seen: dict[tuple[str, int], tuple[int, int]] = {}
        self._handlers: dict[type[Any], Callable[[Any], None]] = {
            BatchEvidence: self._on_batch,
            InferResult: self._on_result,
            ErrorReply: self._on_error,
            DiagnosticEvent: self._on_diag,
            Heartbeat: self._on_heartbeat,
            AuditEvent: self._on_audit,
            StateChange: self._on_state,
            ModelAnnouncement: self._on_model,
        }

    def observe(self, received: Received) -> None:
        """Account one bus message; types that carry no metric are skipped."""
        body = received.body
        if isinstance(body, EndedRequests):
            for ended in body.requests:
                self._on_request(ended.evidence, ended.trace_id)
            return
        handler = self._handlers.get(type(body))
        if handler is not None:
            handler(body)

    def _on_request(self, evidence: RequestEvidence, trace_id: bytes) -> None:
        exemplar = {"trace_id": trace_id.hex()} if trace_id else None
        self.request_duration.labels(outcome=evidence.outcome.value, model=evidence.model).observe(
            evidence.replied_us / 1e6, exemplar=exemplar
        )
        admitted, dispatched, read = (
            evidence.admitted_us,
            evidence.dispatched_us,
            evidence.worker_read_us,
        )
        if admitted is not None and dispatched is not None and read is not None:
            self.dispatch_wait.labels(stage="ingest_queue").observe((dispatched - admitted) / 1e6)
            self.dispatch_wait.labels(stage="socket").observe((read - dispatched) / 1e6)

    def _on_batch(self, batch: BatchEvidence) -> None:
        self.inference.labels(model=batch.model, version=batch.version).observe(
            batch.infer_us / 1e6
        )
        self.postprocess.labels(model=batch.model, version=batch.version).observe(
            batch.postprocess_us / 1e6
        )
        self.batch_size.observe(batch.size)
        if batch.background:
            self.background_batches.inc()

    def _on_result(self, result: InferResult) -> None:
        self.queue_time.observe(result.queue_us / 1e6)
        self.requests.labels(outcome="result", code=RESULT_CODE).inc()

    def _on_error(self, reply: ErrorReply) -> None:
        self.requests.labels(outcome="error", code=reply.code.value).inc()

    def _on_diag(self, event: DiagnosticEvent) -> None:
        if self._kinds.get(event.node) == "ingest":
            # Past its evidence rate the ingest seals refusals as aggregates with a count.
            self.rejections.labels(reason=event.code.value).inc(event.count)

    def _on_heartbeat(self, beat: Heartbeat) -> None:
        with self.live.lock:
            if beat.detail.get("lifecycle") == "stopping":
                # A node stopping on purpose is not a node gone silent: stop ageing it.
                self.live.beats.pop(beat.node, None)
            else:
                self.live.beats[beat.node] = self._clock()
        if beat.node not in self._kinds:
            self._kinds[beat.node] = beat.kind
            self.restarts.labels(node=beat.node)
        if beat.kind == "ingest":
            self._on_ingest_counts(beat)
        last = _millis(beat.detail, "last_commit_ms")
        if last is not None:
            self.commit_latency.set(last / 1e3)
        worst = _millis(beat.detail, "max_commit_ms")
        if worst is not None:
            self.commit_latency_max.set(worst / 1e3)

    def _on_ingest_counts(self, beat: Heartbeat) -> None:
        allowed = _count(beat.detail, "rate_allowed")
        refused = _count(beat.detail, "rate_refused")
        if allowed is None or refused is None:
            return
        # The beat carries cumulative counts per process; a restarted ingest (a new pid)
        # starts again from zero, so only growth within one process is added.
        key = (beat.node, beat.pid)
        was_allowed, was_refused = self._rate_seen.get(key, (0, 0))
        self._rate_seen[key] = (allowed, refused)
        if allowed > was_allowed:
            self.rate_limit.labels(decision="allowed").inc(allowed - was_allowed)
        if refused > was_refused:
            self.rate_limit.labels(decision="refused").inc(refused - was_refused)

    def _on_audit(self, event: AuditEvent) -> None:
        if event.event is AuditId.NODE_RESTARTED and event.detail:
            # The launcher's detail reads "<label> exited with code N; restart ...".
            self.restarts.labels(node=event.detail.split(" ", 1)[0]).inc()

    def _on_state(self, change: StateChange) -> None:
        for state in SafetyState:
            self.safety_state.labels(state=state.value).set(1 if state is change.state else 0)

    def _on_model(self, announcement: ModelAnnouncement) -> None:
        name, version = announcement.name, announcement.version
        self.inference.labels(model=name, version=version)
        self.postprocess.labels(model=name, version=version)
        for outcome in Outcome:
            self.request_duration.labels(outcome=outcome.value, model=name)
        self.model_active.clear()
        self.model_active.labels(model=name, version=version).set(1)


def _count(detail: dict[str, str], key: str) -> int | None:
    try:
        value = int(detail[key])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


def _millis(detail: dict[str, str], key: str) -> float | None:
    try:
        value = float(detail[key])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


@contextmanager
def serve(registry: CollectorRegistry, bind: str, port: int) -> Iterator[str]:
    """Serve `registry` on http://bind:port/metrics until the block ends; yields the URL.

    The server runs on prometheus_client's own daemon threads; leaving the block stops it and
    closes the listening socket, so a SIGTERM leaves no port behind.
    """
    server, thread = start_http_server(port, addr=bind, registry=registry)
    try:
        host, bound = server.server_address[:2]
        yield f"http://{_url_host(str(host))}:{bound}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def run(config: MetricsConfig, args: NodeArgs) -> ExitCode:
    """Serve `/metrics` and account every bus message until SIGTERM/SIGINT."""
    with Node(args) as node:
        metrics = BusMetrics(node.clock)
        try:
            url = node.enter(serve(metrics.registry, config.bind, config.port))
        except OSError as exc:
            node.log.error(
                "metrics.bind_failed", bind=config.bind, port=config.port, error=str(exc)
            )
            return ExitCode.CONFIG
        # The live system's figures: a replay (`vigil bag play`) moves none of them.
        sub = node.subscriber(sorted(COUNTED), skip_replayed=True)
        with metrics.live.lock:
            metrics.live.subscriber = sub
        node.ready(KIND.contract(config), endpoints={"metrics": url})
        while not node.stopping:
            if not node.poll().get(sub.socket):
                continue
            for _ in range(_BURST):
                # Subscriber.decode updates the per-topic counts the collector reads.
                with metrics.live.lock:
                    received = sub.recv(0)
                if received is None:
                    break
                metrics.observe(received)
        with metrics.live.lock:
            metrics.live.subscriber = None
        node.log.info("node.stopping", reason=node.stop_reason, lost=sub.lost)
    return ExitCode.OK
