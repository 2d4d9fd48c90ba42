"""The metrics node's accounting: which bus message moves which metric."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client.openmetrics.exposition import generate_latest

from vigil.bus.envelope import Envelope
from vigil.bus.pubsub import Received
from vigil.nodes.metrics._node import BusMetrics
from vigil.schemas import (
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
    Message,
    ModelAnnouncement,
    Outcome,
    PerceptionOutput,
    RequestEvidence,
    SafetyState,
    Severity,
    StateChange,
    TracedEvidence,
    schema_id,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


_SEQ = itertools.count(1)


def received(body: Message, topic: str = "t") -> Received:
    envelope = Envelope(schema=schema_id(type(body)), seq=next(_SEQ), source="x")
    return Received(topic, envelope, body, [], [], 0)


def beat(node: str, kind: str, pid: int = 10, **detail: str) -> Received:
    return received(
        Heartbeat(node=node, instance=0, pid=pid, period_ms=100, kind=kind, detail=detail)
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics(clock: Clock) -> BusMetrics:
    return BusMetrics(clock)


def value(metrics: BusMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_known_label_sets_start_at_zero(metrics: BusMetrics) -> None:
    """Every error code, diagnostic code, decision and state is exported before any event."""
    for code in ErrorCode:
        assert value(metrics, "vigil_requests_total", outcome="error", code=code.value) == 0
    for diag in DiagCode:
        assert value(metrics, "vigil_rejections_total", reason=diag.value) == 0
    assert value(metrics, "vigil_rate_limit_decisions_total", decision="refused") == 0
    for state in SafetyState:
        assert value(metrics, "vigil_safety_state", state=state.value) == 0
    assert value(metrics, "vigil_topic_messages_total", topic="infer/result") == 0


def _result(batch_size: int = 3) -> InferResult:
    return InferResult(
        stream_id="s",
        frame_ts_us=1,
        output=PerceptionOutput(confidence=1.0, timestamp_us=1, boxes=[]),
        model="det",
        version="2",
        batch_size=batch_size,
        queue_us=1500,
        infer_us=20_000,
    )


def test_a_result_moves_the_queue_time_and_the_count(metrics: BusMetrics) -> None:
    """A result's queue wait and its count are per result; nothing per batch moves."""
    metrics.observe(received(_result()))
    metrics.observe(received(_result()))
    assert value(metrics, "vigil_queue_time_seconds_sum") == pytest.approx(0.003)
    assert value(metrics, "vigil_requests_total", outcome="result", code="OK") == 2
    assert value(metrics, "vigil_batch_size_count") == 0


def test_a_batch_is_observed_once_in_the_per_batch_histograms(metrics: BusMetrics) -> None:
    """One batch of three moves inference, post-processing and batch size once."""
    batch = BatchEvidence(
        worker="w",
        model="det",
        version="2",
        batch_id=1,
        size=3,
        infer_us=20_000,
        postprocess_us=500,
    )
    metrics.observe(received(batch))
    for _ in range(3):
        metrics.observe(received(_result()))
    labels = {"model": "det", "version": "2"}
    assert value(metrics, "vigil_inference_duration_seconds_count", **labels) == 1
    assert value(metrics, "vigil_inference_duration_seconds_sum", **labels) == pytest.approx(0.02)
    assert value(metrics, "vigil_postprocess_duration_seconds_sum", **labels) == pytest.approx(5e-4)
    assert value(metrics, "vigil_batch_size_count") == 1
    assert value(metrics, "vigil_batch_size_bucket", le="2.0") == 0
    assert value(metrics, "vigil_batch_size_bucket", le="4.0") == 1


def test_a_request_lands_end_to_end_with_its_trace_as_exemplar(metrics: BusMetrics) -> None:
    """Each request's reply time is observed by outcome and model, its trace id the exemplar."""
    served = RequestEvidence(outcome=Outcome.SERVED, code="OK", model="det", replied_us=4000)
    refused = RequestEvidence(outcome=Outcome.REFUSED, code="UNAVAILABLE", replied_us=50)
    metrics.observe(
        received(
            EndedRequests(
                requests=[
                    TracedEvidence(trace_id=bytes(range(16)), evidence=served),
                    TracedEvidence(trace_id=b"\1" * 16, evidence=refused),
                ]
            )
        )
    )
    labels = {"outcome": "served", "model": "det"}
    assert value(metrics, "vigil_request_duration_seconds_sum", **labels) == pytest.approx(0.004)
    refusals = {"outcome": "refused", "model": ""}
    assert value(metrics, "vigil_request_duration_seconds_count", **refusals) == 1
    exposition = generate_latest(metrics.registry).decode()
    (line,) = [x for x in exposition.splitlines() if bytes(range(16)).hex() in x]
    assert 'le="0.005"' in line and 'outcome="served"' in line


def _ended(evidence: RequestEvidence) -> EndedRequests:
    """One request's evidence as the ingest publishes it."""
    return EndedRequests(requests=[TracedEvidence(trace_id=b"\1" * 16, evidence=evidence)])


def test_a_served_request_moves_its_dispatch_waits(metrics: BusMetrics) -> None:
    """The evidence's stamps give the wait queued in the ingest (admitted to dispatched) and
    in the worker's socket buffer (dispatched to read by the worker's loop)."""
    evidence = RequestEvidence(
        outcome=Outcome.SERVED,
        code="OK",
        admitted_us=100,
        dispatched_us=800,
        worker_read_us=840,
        batch_start_us=900,
        batch_end_us=3000,
        replied_us=4000,
    )
    metrics.observe(received(_ended(evidence)))
    wait = "vigil_dispatch_wait_seconds_sum"
    assert value(metrics, wait, stage="ingest_queue") == pytest.approx(0.0007)
    assert value(metrics, wait, stage="socket") == pytest.approx(0.00004)


def test_a_refusal_moves_no_dispatch_wait(metrics: BusMetrics) -> None:
    """A request refused before it reached a worker waited in no dispatch stage."""
    refused = RequestEvidence(outcome=Outcome.REFUSED, code="UNAVAILABLE", replied_us=50)
    metrics.observe(received(_ended(refused)))
    assert value(metrics, "vigil_request_duration_seconds_count", outcome="refused", model="") == 1
    assert value(metrics, "vigil_dispatch_wait_seconds_count", stage="socket") == 0


def test_the_announced_model_is_the_active_one(metrics: BusMetrics) -> None:
    """model/active sets its version to 1 and the one before it goes away."""
    for version in ("1", "2"):
        metrics.observe(
            received(
                ModelAnnouncement(name="det", version=version, path="p", sha256="a" * 64, size=1)
            )
        )
    assert value(metrics, "vigil_model_active_info", model="det", version="2") == 1
    assert value(metrics, "vigil_model_active_info", model="det", version="1") is None


def test_errors_count_by_code(metrics: BusMetrics) -> None:
    """An error reply counts under its wire code."""
    metrics.observe(received(ErrorReply(code=ErrorCode.UNAVAILABLE, message="m")))
    assert value(metrics, "vigil_requests_total", outcome="error", code="UNAVAILABLE") == 1


def test_only_the_ingests_diagnostics_are_rejections(metrics: BusMetrics) -> None:
    """A watchdog diagnostic is not a refused request."""
    metrics.observe(beat("ingest", "ingest"))
    metrics.observe(beat("watchdog", "watchdog"))
    for node in ("ingest", "watchdog"):
        metrics.observe(
            received(
                DiagnosticEvent(
                    code=DiagCode.RANGE_OR_SEQUENCE,
                    severity=Severity.WARNING,
                    node=node,
                    message="m",
                )
            )
        )
    assert value(metrics, "vigil_rejections_total", reason="DIA-2047") == 1


def test_an_aggregate_of_refusals_counts_each(metrics: BusMetrics) -> None:
    """A diagnostic that stands for many refusals (past the evidence rate) counts them all."""
    metrics.observe(beat("ingest", "ingest"))
    metrics.observe(
        received(
            DiagnosticEvent(
                code=DiagCode.OVERLOADED,
                severity=Severity.WARNING,
                node="ingest",
                message="120 requests refused",
                count=120,
            )
        )
    )
    assert value(metrics, "vigil_rejections_total", reason="DIA-2051") == 120


def test_rate_decisions_add_growth_and_survive_an_ingest_restart(metrics: BusMetrics) -> None:
    """Cumulative beat counts become increments; a new pid starts from zero again."""
    metrics.observe(beat("ingest", "ingest", rate_allowed="5", rate_refused="1"))
    metrics.observe(beat("ingest", "ingest", rate_allowed="5", rate_refused="1"))
    metrics.observe(beat("ingest", "ingest", rate_allowed="8", rate_refused="3"))
    metrics.observe(beat("ingest", "ingest", pid=11, rate_allowed="2", rate_refused="0"))
    metrics.observe(beat("ingest", "ingest", pid=11, rate_allowed="x"))
    assert value(metrics, "vigil_rate_limit_decisions_total", decision="allowed") == 10
    assert value(metrics, "vigil_rate_limit_decisions_total", decision="refused") == 3


def test_restarts_count_per_node_from_the_launchers_audit(metrics: BusMetrics) -> None:
    """NODE_RESTARTED names the node first in its detail; other audit events do not count."""
    metrics.observe(beat("worker.1", "worker"))
    assert value(metrics, "vigil_node_restarts_total", node="worker.1") == 0
    detail = "worker.1 exited with code -9; restart 1 in 200 ms"
    metrics.observe(
        received(AuditEvent(event=AuditId.NODE_RESTARTED, node="launcher", detail=detail))
    )
    metrics.observe(received(AuditEvent(event=AuditId.NODE_FAILED, node="launcher", detail=detail)))
    assert value(metrics, "vigil_node_restarts_total", node="worker.1") == 1


def test_safety_state_is_one_for_the_current_state_only(metrics: BusMetrics) -> None:
    """The enum-as-gauge pattern: exactly one state is 1."""
    for state in (SafetyState.DEGRADED, SafetyState.RECOVERING):
        metrics.observe(
            received(StateChange(state=state, previous=SafetyState.NORMAL, cause="c", since_ns=1))
        )
    assert value(metrics, "vigil_safety_state", state="RECOVERING") == 1
    assert value(metrics, "vigil_safety_state", state="DEGRADED") == 0


def test_heartbeat_age_is_computed_at_scrape_and_dropped_on_a_clean_stop(
    metrics: BusMetrics, clock: Clock
) -> None:
    """Age grows with the clock; a node that said it stops is no longer aged."""
    metrics.observe(beat("loader", "loader"))
    clock.now += 2_500_000_000
    assert value(metrics, "vigil_heartbeat_age_seconds", node="loader") == pytest.approx(2.5)
    metrics.observe(beat("loader", "loader", lifecycle="stopping"))
    assert value(metrics, "vigil_heartbeat_age_seconds", node="loader") is None


def test_log_commit_latency_comes_from_the_logger_beat(metrics: BusMetrics) -> None:
    """The logger's millisecond figures are exported in seconds."""
    metrics.observe(beat("logger", "logger", last_commit_ms="1.500", max_commit_ms="4.000"))
    assert value(metrics, "vigil_log_commit_latency_seconds") == pytest.approx(0.0015)
    assert value(metrics, "vigil_log_commit_latency_max_seconds") == pytest.approx(0.004)
