"""The metrics node: one Prometheus endpoint that every node feeds over the bus."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import INGEST, pipeline_launch
from vigil.bus.rundir import RunDir
from vigil.client import Client
from vigil.errors import RequestError
from vigil.launch import Launcher, load
from vigil.nodes._scene import render_scene
from vigil.nodes.ingest import RateLimitConfig
from vigil.nodes.metrics import MetricsConfig
from vigil.schemas import DiagCode, ErrorCode, InferResult
from vigil.testing.launchfiles import launch_file, node, write

# Every family the endpoint owes from start-up (counters without their `_total`).
FAMILIES = {
    "vigil_inference_duration_seconds": "histogram",
    "vigil_postprocess_duration_seconds": "histogram",
    "vigil_request_duration_seconds": "histogram",
    "vigil_model_active_info": "gauge",
    "vigil_queue_time_seconds": "histogram",
    "vigil_dispatch_wait_seconds": "histogram",
    "vigil_batch_size": "histogram",
    "vigil_background_batches": "counter",
    "vigil_requests": "counter",
    "vigil_rejections": "counter",
    "vigil_rate_limit_decisions": "counter",
    "vigil_topic_messages": "counter",
    "vigil_topic_lost": "counter",
    "vigil_heartbeat_age_seconds": "gauge",
    "vigil_node_restarts": "counter",
    "vigil_safety_state": "gauge",
    "vigil_log_commit_latency_seconds": "gauge",
    "vigil_log_commit_latency_max_seconds": "gauge",
}

# Per tenant: a burst of 8 of which low priority may take 6 (a quarter stays reserved), and
# one token a second after that: a quick flood of 10 is refused at least 4 times.
RATE_LIMIT = RateLimitConfig(rate_per_s=1.0, burst=8.0, reserved_fraction=0.25, high_priority=4)


@dataclass(frozen=True)
class Scrape:
    """One parsed scrape: family types and every sample by (name, sorted labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sample `name{labels}`, 0 when absent."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of every `name` sample whose labels include `labels`."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= set(ls))

    def labelled(self, name: str, label: str) -> set[str]:
        """The values of `label` across the samples of `name`."""
        return {dict(ls)[label] for (n, ls) in self.samples if n == name and label in dict(ls)}


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return Scrape(types, samples)


def scrape_until(
    launcher: Launcher, url: str, done: Callable[[Scrape], bool], timeout_s: float = 30.0
) -> Scrape:
    """Scrape until `done` holds, letting the launcher supervise in between; fail at the
    deadline with the last scrape's figures."""
    deadline = time.monotonic() + timeout_s
    while True:
        last = scrape(url)
        if done(last):
            return last
        if time.monotonic() > deadline:
            figures = {k: v for k, v in last.samples.items() if "bucket" not in k[0]}
            pytest.fail(f"metrics did not reach the expected values: {figures}")
        # Waits on the launcher's control socket (at most 50 ms), not on the clock.
        launcher.supervise(0.05)


@pytest.fixture
def metered(short_tmp: Path) -> Iterator[tuple[Launcher, str]]:
    """The pipeline with a metrics node (first, so it hears every node from its start) and
    a rate-limited ingest; yields the launcher and the /metrics URL from graph.json."""
    # The metered client sends at priority 4: clients without a binding may, here.
    ingest = msgspec.structs.replace(INGEST, rate_limit=RATE_LIMIT, default_max_priority=4)
    launch = pipeline_launch(ingest=ingest)
    # Port 0: the kernel picks a free port and the node reports it, so nothing races for one.
    metrics = node("metrics", MetricsConfig(port=0))
    launch = msgspec.structs.replace(launch, nodes=[metrics, *launch.nodes])
    path = write(launch, short_tmp, "metrics.yaml")
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        url = run.read_graph().endpoints["metrics.metrics"]
        assert url.startswith("http://127.0.0.1:")
        yield launcher, url


def test_every_metric_is_exported_from_start_and_moves_under_load(
    metered: tuple[Launcher, str],
) -> None:
    """All metrics exist from start-up and count results, errors, rejections and restarts."""
    launcher, url = metered
    graph = launcher.run.read_graph()
    labels = {n.name for n in graph.nodes} - {"proxy"}
    # Every node has beaten at least once and the latched safety state has arrived.
    before = scrape_until(
        launcher,
        url,
        lambda s: (
            labels <= s.labelled("vigil_heartbeat_age_seconds", "node")
            and s.value("vigil_safety_state", state="NORMAL") == 1
        ),
    )
    for name, kind in FAMILIES.items():
        assert before.types.get(name) == kind, name
    for code in ErrorCode:
        assert ("vigil_requests_total", (("code", code.value), ("outcome", "error"))) in (
            before.samples
        )
    assert before.labelled("vigil_rejections_total", "reason") == {c.value for c in DiagCode}
    assert before.labelled("vigil_rate_limit_decisions_total", "decision") == {
        "allowed",
        "refused",
    }
    assert labels <= before.labelled("vigil_node_restarts_total", "node")
    assert before.total("vigil_safety_state") == 1
    # The serving model is announced on a latched topic: its series exist before any result.
    assert ("ppocr-det", "4.0") in {
        (dict(ls)["model"], dict(ls)["version"])
        for (n, ls) in before.samples
        if n == "vigil_inference_duration_seconds_count"
    }

    results = 0
    errors: dict[str, int] = {}
    reasons: dict[str, int] = {}
    frame = render_scene(0, 96, 160)
    with Client(launcher.run.ipc("ingest"), name="metered", tenant="steady", priority=4) as client:
        for i in range(4):
            reply = client.infer(frame, stream_id="m0", frame_ts_us=1000 + i, deadline_s=20)
            assert isinstance(reply, InferResult)
            results += 1
        bad = [np.zeros((8, 8, 4), np.uint8), np.zeros((1200, 16, 3), np.uint8)]
        for i, image in enumerate(bad):
            with pytest.raises(RequestError) as caught:
                client.infer(image, stream_id="m1", frame_ts_us=10 + i, deadline_s=20)
            errors[caught.value.code] = errors.get(caught.value.code, 0) + 1
            reasons[caught.value.reply.diag_code] = reasons.get(caught.value.reply.diag_code, 0) + 1
        client.submit_raw(b"\xc1 not msgpack", [], deadline_s=20)
        _, outcome = _reply(client)
        assert isinstance(outcome, RequestError)
        errors[outcome.code] = errors.get(outcome.code, 0) + 1
        reasons[outcome.reply.diag_code] = reasons.get(outcome.reply.diag_code, 0) + 1
    with Client(launcher.run.ipc("ingest"), name="flood", tenant="flood", priority=0) as flood:
        for i in range(10):
            flood.submit(frame, stream_id="f0", frame_ts_us=1000 + i, deadline_s=20)
        refused = 0
        while flood.in_flight:
            _, outcome = _reply(flood)
            if isinstance(outcome, InferResult):
                results += 1
                continue
            errors[outcome.code] = errors.get(outcome.code, 0) + 1
            reasons[outcome.reply.diag_code] = reasons.get(outcome.reply.diag_code, 0) + 1
            refused += outcome.code == ErrorCode.RESOURCE_EXHAUSTED
    assert refused >= 1
    assert errors.get(ErrorCode.INVALID_ARGUMENT) == 3

    # One worker dies: the launcher restarts it and says so on the audit topic.
    worker = next(n for n in graph.nodes if n.kind == "worker")
    os.kill(worker.pid, signal.SIGKILL)

    def settled(s: Scrape) -> bool:
        grew = all(
            s.value("vigil_requests_total", outcome="error", code=code)
            >= before.value("vigil_requests_total", outcome="error", code=code) + n
            for code, n in errors.items()
        ) and all(
            s.value("vigil_rejections_total", reason=reason)
            >= before.value("vigil_rejections_total", reason=reason) + n
            for reason, n in reasons.items()
        )
        return (
            grew
            and s.value("vigil_requests_total", outcome="result", code="OK")
            >= before.value("vigil_requests_total", outcome="result", code="OK") + results
            and s.value("vigil_rate_limit_decisions_total", decision="refused")
            >= before.value("vigil_rate_limit_decisions_total", decision="refused") + refused
            and s.value("vigil_rate_limit_decisions_total", decision="allowed")
            >= before.value("vigil_rate_limit_decisions_total", decision="allowed") + results
            and s.value("vigil_node_restarts_total", node=worker.name)
            >= before.value("vigil_node_restarts_total", node=worker.name) + 1
            and s.value("vigil_log_commit_latency_seconds") > 0
        )

    after = scrape_until(launcher, url, settled)
    assert after.total("vigil_batch_size_count") >= before.total("vigil_batch_size_count") + 1
    assert after.total("vigil_queue_time_seconds_count") >= (
        before.total("vigil_queue_time_seconds_count") + results
    )
    # Observed once per batch: at least one batch, at most one per result.
    served_by = {"model": "ppocr-det", "version": "4.0"}
    batches = after.value("vigil_inference_duration_seconds_count", **served_by)
    assert batches - before.value("vigil_inference_duration_seconds_count", **served_by) >= 1
    assert after.value("vigil_inference_duration_seconds_sum", **served_by) > 0
    assert after.value("vigil_model_active_info", model="ppocr-det", version="4.0") == 1
    served = after.value(
        "vigil_request_duration_seconds_count", outcome="served", model="ppocr-det"
    )
    assert served >= results
    for topic in ("infer/result", "infer/error", "diag/event", "health/heartbeat"):
        assert after.value("vigil_topic_messages_total", topic=topic) > before.value(
            "vigil_topic_messages_total", topic=topic
        ), topic
    assert after.total("vigil_topic_lost_total") >= 0
    ages = {
        dict(ls)["node"]: v for (n, ls), v in after.samples.items() if n.startswith("vigil_heart")
    }
    assert ages.keys() >= labels - {worker.name}
    assert all(0 <= age < 30 for age in ages.values())
    assert after.value("vigil_log_commit_latency_max_seconds") >= after.value(
        "vigil_log_commit_latency_seconds"
    )


def test_metrics_node_stops_on_sigterm_and_frees_its_port(short_tmp: Path) -> None:
    """SIGTERM ends the node with exit 0 and the HTTP server's socket closed."""
    launch = launch_file("m", node("metrics", MetricsConfig(port=0)), heartbeat_ms=200)
    path = write(launch, short_tmp, "metrics-only.yaml")
    run = RunDir(short_tmp / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        url = run.read_graph().endpoints["metrics.metrics"]
        assert "vigil_requests" in scrape(url).types
    child = next(c for c in launcher.children if c.plan.spec.kind == "metrics")
    assert child.popen is not None and child.popen.returncode == 0
    with pytest.raises(urllib.error.URLError):
        scrape(url)


def _reply(client: Client) -> tuple[int, InferResult | RequestError]:
    reply = client.poll(30_000)
    assert reply is not None
    return reply
