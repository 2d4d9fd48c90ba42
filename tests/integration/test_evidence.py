"""One trace from client to sealed log: a request's evidence, spans, exemplar and log lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from vigil.bus.envelope import Envelope, TraceContext
from vigil.bus.rundir import RunDir
from vigil.client import Answer, Client
from vigil.errors import InvalidArgument
from vigil.launch import Launcher, load
from vigil.nodes._tracing import FILE_VAR
from vigil.nodes.metrics import MetricsConfig
from vigil.schemas import InferResult
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import FAST_INGEST, FRAME, classifier_serving
from vigil.tools.log_cmd import log

trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")
export = pytest.importorskip("opentelemetry.sdk.trace.export")
memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
STAGES = (
    "received",
    "admitted",
    "dispatched",
    "worker read",
    "batch start",
    "batch end",
    "replied",
)


@dataclass
class Run:
    """What one traced pipeline run left behind, read after it stopped."""

    store: Path
    logs: Path
    sent: TraceContext  # the client's span, as its traceparent said
    served: Answer
    refused: Answer  # refused by the validator after decoding
    undecodable: Answer  # refused at decode: its body is not MessagePack
    client_spans: list[Any]
    node_spans: list[dict[str, Any]]
    exposition: str  # OpenMetrics
    text: str  # the classic text format, as promtool reads it
    exemplar: dict[str, str] = field(default_factory=dict)


def _scrape(url: str, accept: str = OPENMETRICS) -> str:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=5) as response:
        kind = "application/openmetrics-text" if accept else "text/plain"
        assert response.headers["Content-Type"].startswith(kind)
        return response.read().decode()


def _exemplar(text: str, trace_id: str) -> dict[str, str]:
    """The labels of the end-to-end histogram's exemplar that carries `trace_id`, if any."""
    for family in text_string_to_metric_families(text):
        if family.name != "vigil_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.exemplar is not None and sample.exemplar.labels.get("trace_id") == trace_id:
                return {**sample.labels, **sample.exemplar.labels}
    return {}


def _undecodable(client: Client, trace: TraceContext) -> Answer:
    """Send a readable envelope in `trace` with a body that is not MessagePack."""
    envelope = Envelope.build(schema="infer.request", seq=991, source="tracer", trace=trace)
    client.send_frames([client.channel.encode(envelope), b"\xc1", b""])
    answer = client.poll_answer(30_000)
    assert answer is not None
    return answer


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """A classifier pipeline with a metrics node and span files, one traced request through
    it (plus two refusals), scraped while it ran; stopped before the tests read anything."""
    with (
        tempfile.TemporaryDirectory(prefix="vg-", dir="/tmp") as tmp,
        pytest.MonkeyPatch.context() as env,
    ):
        folder = Path(tmp)
        spans_dir = folder / "spans"
        spans_dir.mkdir()
        env.setenv(FILE_VAR, str(spans_dir))
        root, trusted, _ = signed_pair(folder)
        launch = launch_file(
            "evidence",
            *classifier_serving(root, trusted, workers=1),
            node("ingest", FAST_INGEST),
            node("metrics", MetricsConfig(port=0)),
        )
        rundir = RunDir(folder / "run")
        exporter = memory.InMemorySpanExporter()
        provider = trace_sdk.TracerProvider()
        provider.add_span_processor(export.SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with Launcher(load(write(launch, folder), rundir.path), rundir) as launcher:
            launcher.start()
            url = rundir.read_graph().endpoints["metrics.metrics"]
            with Client(rundir.ipc("ingest"), name="tracer", ctx=launcher.ctx) as client:
                with tracer.start_as_current_span("client.infer") as span:
                    ids = span.get_span_context()
                    sent = TraceContext.parse(f"00-{ids.trace_id:032x}-{ids.span_id:016x}-01")
                    served = client.infer_answer(
                        FRAME, stream_id="traced", frame_ts_us=1, deadline_s=30, trace=sent
                    )
                refused = client.infer_answer(
                    np.zeros((8, 8, 4), np.uint8),
                    stream_id="traced",
                    frame_ts_us=2,
                    deadline_s=30,
                    trace=TraceContext.new(),
                )
                undecodable = _undecodable(client, TraceContext.new())
            exposition, exemplar = "", {}
            deadline = time.monotonic() + 30
            while not exemplar and time.monotonic() < deadline:
                exposition = _scrape(url)
                exemplar = _exemplar(exposition, sent.trace_id.hex())
                launcher.supervise(0.05)  # waits on the launcher's control socket
            text = _scrape(url, accept="")
        provider.shutdown()
        spans = [
            json.loads(line)
            for path in sorted(spans_dir.glob("*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        yield Run(
            store=rundir.path / "log.store",
            logs=rundir.path / "logs",
            sent=sent,
            served=served,
            refused=refused,
            undecodable=undecodable,
            client_spans=list(exporter.get_finished_spans()),
            node_spans=spans,
            exposition=exposition,
            text=text,
            exemplar=exemplar,
        )


def test_log_trace_shows_a_served_request_with_every_stage(run: Run) -> None:
    """`vigil log trace STORE TRACE_ID` finds a served request and times each of its stages."""
    assert isinstance(run.served.outcome, InferResult)
    result = CliRunner().invoke(log, ["trace", str(run.store), run.sent.trace_id.hex()])
    assert result.exit_code == 0, result.output
    assert "request served (OK)" in result.output
    lines = result.output.splitlines()
    for stage in STAGES:
        assert any(line.strip().startswith(stage) for line in lines), stage


@pytest.mark.parametrize("which", ["refused", "undecodable"])
def test_log_trace_shows_a_refused_request(run: Run, which: str) -> None:
    """A refusal, at validation or at decode, is traced under the trace its reply echoed."""
    answer: Answer = getattr(run, which)
    assert answer.trace is not None
    result = CliRunner().invoke(log, ["trace", str(run.store), answer.trace.trace_id.hex()])
    assert result.exit_code == 0, result.output
    assert "request refused (INVALID_ARGUMENT" in result.output
    assert "replied" in result.output and "dispatched" not in result.output


def test_log_show_request_lists_each_request_once(run: Run) -> None:
    """`vigil log show --request` prints one line per request with its outcome and code."""
    result = CliRunner().invoke(log, ["show", str(run.store), "--request"])
    assert result.exit_code == 0, result.output
    mine = {
        a.trace.trace_id.hex(): line
        for a in (run.served, run.refused, run.undecodable)
        if a.trace is not None
        for line in result.output.splitlines()
        if a.trace.trace_id.hex() in line
    }
    assert len(mine) == 3
    assert " served " in mine[run.sent.trace_id.hex()]


def test_every_reply_echoes_the_request_trace(run: Run) -> None:
    """The client reads the trace back from a result, a validation refusal and a decode
    refusal whose envelope was readable."""
    assert run.served.trace is not None
    assert run.served.trace.trace_id == run.sent.trace_id
    assert isinstance(run.refused.outcome, InvalidArgument)
    assert run.refused.trace is not None
    assert run.refused.outcome.traceparent == run.refused.trace.traceparent
    assert isinstance(run.undecodable.outcome, InvalidArgument)
    assert run.undecodable.trace is not None


def test_the_latency_lands_in_the_histogram_with_its_trace_as_exemplar(run: Run) -> None:
    """vigil_request_duration_seconds has an exemplar naming the served request's trace."""
    assert run.exemplar.get("outcome") == "served"
    assert run.exemplar.get("model") == "tiny"


def test_spans_form_one_tree_across_processes(run: Run) -> None:
    """Client, ingest and worker spans of the request share its trace and form one tree: the
    ingest's under the client's, the worker's under the ingest's, linked to the batch."""
    trace = f"0x{run.sent.trace_id.hex()}"
    (client,) = run.client_spans
    spans = [s for s in run.node_spans if s["context"]["trace_id"] == trace]
    by_name = {s["name"]: s for s in spans}
    assert set(by_name) == {
        "ingest.request",
        "ingest.admission",
        "ingest.queue",
        "worker.request",
        "worker.socket",
        "worker.queue",
        "worker.inference",
        "worker.postprocess",
    }
    assert len({s["resource"]["attributes"]["service.name"] for s in spans}) == 2
    parent = {s["name"]: s["parent_id"] for s in spans}
    span_id = {s["name"]: s["context"]["span_id"] for s in spans}
    assert parent["ingest.request"] == f"0x{client.context.span_id:016x}"
    for child in ("ingest.admission", "ingest.queue", "worker.request"):
        assert parent[child] == span_id["ingest.request"], child
    for child in ("worker.socket", "worker.queue", "worker.inference", "worker.postprocess"):
        assert parent[child] == span_id["worker.request"], child
    (batch_link,) = by_name["worker.request"]["links"]
    batch = next(
        s for s in run.node_spans if s["context"]["span_id"] == batch_link["context"]["span_id"]
    )
    assert batch["name"] == "worker.batch"
    assert any(link["context"]["trace_id"] == trace for link in batch["links"])


def test_log_lines_on_the_request_path_carry_the_trace(run: Run) -> None:
    """The ingest's JSON line about a refusal names the refused request's trace and span."""
    assert run.refused.trace is not None
    wanted = run.refused.trace.trace_id.hex()
    lines = [json.loads(line) for line in (run.logs / "ingest.log").read_text().splitlines()]
    (line,) = [entry for entry in lines if entry.get("trace_id") == wanted]
    assert line["span_id"] == run.refused.trace.span_id.hex()
    assert line["event"] == "diag"


def test_the_exposition_passes_the_metrics_lint(run: Run) -> None:
    """The OpenMetrics page parses strictly, and every family is a `vigil_` name in base
    units with help text (promtool's rules; promtool itself runs where it is installed)."""
    families = list(text_string_to_metric_families(run.exposition))
    assert families
    for family in families:
        assert family.name.startswith("vigil_"), family.name
        assert family.documentation, family.name
        for unit in ("milliseconds", "microseconds", "nanoseconds", "minutes", "kilobytes"):
            assert unit not in family.name, family.name
        if family.type == "histogram" and "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=run.text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
