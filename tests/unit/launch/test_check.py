"""`vigil graph check`: wiring faults in launch files are found before anything starts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from vigil.launch import LaunchFile, Level, NodeSpec, RestartPolicy, load
from vigil.launch.check import GraphReport, check_file, check_plan
from vigil.nodes.contract import NodeContract
from vigil.nodes.demo_sink import SinkConfig
from vigil.nodes.demo_source import SourceConfig
from vigil.nodes.ingest import IngestConfig
from vigil.nodes.kinds import node_kinds
from vigil.nodes.loader import LoaderConfig, PinnedModel
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.watchdog import WatchdogConfig
from vigil.nodes.worker import WorkerConfig
from vigil.schemas import Topic
from vigil.testing.launchfiles import launch_file, node, replace_node, write
from vigil.tools.cli import cli

DEMO = Path(__file__).resolve().parents[3] / "launch" / "demo.yaml"
_UNRESTARTED_INGEST = node("ingest", IngestConfig(), restart=RestartPolicy(max_restarts=0))


def _pipeline(**changes: NodeSpec | None) -> LaunchFile:
    """A small complete pipeline; `changes` maps a node name to its node (None removes it)."""
    pinned = PinnedModel(name="m", version="1", path="m.onnx", sha256="0" * 64)
    launch = launch_file(
        "g",
        node("logger", LoggerConfig(store=StoreConfig(path="l.store"))),
        node("loader", LoaderConfig(pinned=pinned)),
        node("worker", WorkerConfig(), replicas=2),
        node("ingest", IngestConfig()),
        node("watchdog", WatchdogConfig()),
        node("sink", SinkConfig()),
    )
    for name, spec in changes.items():
        launch = replace_node(launch, name, spec)
    return launch


def _check(tmp_path: Path, launch: LaunchFile, **kwargs: Any) -> GraphReport:
    return check_plan(load(write(launch, tmp_path), tmp_path / "run"), **kwargs)


def _rules(report: GraphReport, level: Level = Level.ERROR) -> set[tuple[str, str]]:
    return {(f.check, f.subject) for f in report.findings if f.level is level}


def test_the_demo_launch_is_clean_and_fully_covered() -> None:
    """The shipped demo has no finding and every request-path process is covered."""
    report = check_file(DEMO)
    assert report.findings == []
    assert report.coverage == 1.0
    assert {e.node for e in report.elements} == {"ingest", "worker"}


def test_a_complete_pipeline_passes(tmp_path: Path) -> None:
    """The reference pipeline passes; its worker pool is redundant, its ingest supervised."""
    report = _check(tmp_path, _pipeline())
    assert report.ok, report.findings
    ingest = next(e for e in report.elements if e.node == "ingest")
    assert ingest.single_point and any(m.startswith("supervision") for m in ingest.mechanisms)
    worker = next(e for e in report.elements if e.node == "worker")
    assert not worker.single_point and any(m.startswith("redundancy") for m in worker.mechanisms)


def test_a_watched_topic_nobody_publishes_is_an_error(tmp_path: Path) -> None:
    """A watchdog watching a topic for staleness that no node publishes is reported."""
    launch = _pipeline(watchdog=node("watchdog", WatchdogConfig(staleness_ms={"cam/front": 500})))
    report = _check(tmp_path, launch)
    assert ("no-publisher", "watchdog") in _rules(report)
    assert ("unknown-topic", "watchdog") in _rules(report)
    assert not report.ok


def test_a_sink_without_an_ingest_is_an_error(tmp_path: Path) -> None:
    """A demo sink needs results; without an ingest nobody publishes them (and the
    workers have nobody to take work from)."""
    report = _check(tmp_path, _pipeline(ingest=None, watchdog=None))
    errors = _rules(report)
    assert ("no-publisher", "sink") in errors
    assert ("no-peer", "worker") in errors


def test_an_optional_subscription_without_publisher_is_a_warning(tmp_path: Path) -> None:
    """Without a watchdog nobody publishes the safety state: a warning, not an error."""
    report = _check(tmp_path, _pipeline(watchdog=None))
    assert report.ok
    assert ("no-publisher", "ingest") in _rules(report, Level.WARNING)


def test_an_ingest_without_workers_is_an_error(tmp_path: Path) -> None:
    """An ingest backend nobody connects to would answer every request UNAVAILABLE."""
    report = _check(tmp_path, _pipeline(worker=None))
    assert ("no-peer", "ingest") in _rules(report)


def test_a_client_pointed_at_the_wrong_socket_is_an_error(tmp_path: Path) -> None:
    """A demo source connecting to the worker backend has no ingest frontend to talk to."""
    launch = _pipeline(source=node("source", SourceConfig(endpoint="workers")))
    report = _check(tmp_path, launch)
    assert ("no-peer", "source") in _rules(report)


def test_two_ingests_on_one_address_is_an_error(tmp_path: Path) -> None:
    """Two nodes cannot bind one address."""
    report = _check(tmp_path, _pipeline(ingest2=node("ingest2", IngestConfig())))
    assert any(rule == "duplicate-bind" for rule, _ in _rules(report))


def test_a_type_mismatch_is_an_error(tmp_path: Path) -> None:
    """Two contracts that use one topic with different types are reported with both types."""

    sink = node_kinds()["demo_sink"]

    def sink_reading_requests(config: Any) -> NodeContract:
        contract = sink.contract(config)
        return msgspec.structs.replace(contract, types={Topic.INFER_RESULT: "infer.request"})

    kinds = {**node_kinds(), "demo_sink": dataclasses.replace(sink, contract=sink_reading_requests)}
    report = _check(tmp_path, _pipeline(), kinds=kinds)
    (mismatch,) = [f for f in report.errors if f.check == "type-mismatch"]
    assert Topic.INFER_RESULT in mismatch.detail
    assert "infer.request by sink" in mismatch.detail
    assert "infer.result by ingest" in mismatch.detail


def test_an_unsupervised_single_point_is_an_error(tmp_path: Path) -> None:
    """An ingest that is never restarted, with no watchdog, is an uncovered single point;
    the coverage figure drops to the covered share of request-path processes."""
    launch = _pipeline(watchdog=None, ingest=_UNRESTARTED_INGEST)
    report = _check(tmp_path, launch)
    assert ("uncovered-single-point", "ingest") in _rules(report)
    assert report.coverage == pytest.approx(2 / 3)


def test_a_watchdog_covers_an_unrestarted_single_point(tmp_path: Path) -> None:
    """With a watchdog the same ingest's failure is detected: covered, no error."""
    launch = _pipeline(ingest=_UNRESTARTED_INGEST)
    report = _check(tmp_path, launch)
    assert report.ok and report.coverage == 1.0
    ingest = next(e for e in report.elements if e.node == "ingest")
    assert ingest.mechanisms == ["heartbeat (watchdog)"]


def test_queues_are_bounded_and_their_worst_case_stated(tmp_path: Path) -> None:
    """Every request-path queue has a bound; the ingest's worst case in memory is given."""
    report = _check(tmp_path, _pipeline(ingest=node("ingest", IngestConfig(max_queue=16))))
    queues = {(q.node, q.name): q for q in report.queues}
    assert queues["ingest", "ingest.max_queue"].bound == 16
    assert queues["ingest", "ingest.max_queue"].worst_bytes > 16 * 1920 * 1080 * 3
    # Two batches per lane, one lane per core of the worker's budget.
    lanes = WorkerConfig().engine.lane_count()
    assert queues["worker", "worker.credit"].bound == 2 * WorkerConfig().max_batch * lanes


def test_the_command_exits_non_zero_on_errors(tmp_path: Path) -> None:
    """`vigil graph check` prints the findings and exits 1 on an error, 0 when clean."""
    path = write(_pipeline(worker=None), tmp_path, "bad.yaml")
    runner = CliRunner()
    bad = runner.invoke(cli, ["graph", "check", str(path)])
    assert bad.exit_code == 1
    text = " ".join(bad.output.split())  # the report wraps at the terminal's width
    assert "no-peer" in text and "every request would end UNAVAILABLE" in text
    good = runner.invoke(cli, ["graph", "check", str(DEMO)])
    assert good.exit_code == 0, good.output
    assert "single-point fault coverage 100.0%" in good.output
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nnodes: []\n")
    assert runner.invoke(cli, ["graph", "check", str(broken)]).exit_code == 2


TARGET = DEMO.parent / "target.yaml"


def _two_ingests(
    watchdog_endpoints: list[str] | str, worker_backends: list[str] | str
) -> LaunchFile:
    """The reference pipeline with a second ingest; who connects to which is given."""
    second = node("ingest-b", IngestConfig(frontend="ingest-b", backend="workers-b"))
    probe = WatchdogConfig().probe
    return _pipeline(
        worker=node("worker", WorkerConfig(backend=worker_backends), replicas=2),
        watchdog=node(
            "watchdog",
            WatchdogConfig(probe=msgspec.structs.replace(probe, endpoint=watchdog_endpoints)),
        ),
        **{"ingest-b": second},
    )


@pytest.mark.verifies("SR-RED-001")
def test_the_shipped_target_has_no_single_point() -> None:
    """The target launch file runs two ingests that everyone reaches: no single point."""
    report = check_file(TARGET)
    assert report.ok, report.findings
    assert not [e.node for e in report.elements if e.single_point]


@pytest.mark.verifies("SR-RED-001")
def test_an_ingest_everyone_also_reaches_elsewhere_has_a_standby(tmp_path: Path) -> None:
    """Two ingests that every client and worker connect to cover each other."""
    report = _check(tmp_path, _two_ingests(["ingest", "ingest-b"], ["workers", "workers-b"]))
    ingests = {e.node: e for e in report.elements if e.kind == "ingest"}
    assert set(ingests) == {"ingest", "ingest-b"}
    assert not any(e.single_point for e in ingests.values())
    assert "redundancy (standby: ingest-b)" in ingests["ingest"].mechanisms


@pytest.mark.verifies("SR-RED-001")
def test_an_ingest_a_client_reaches_alone_is_a_single_point(tmp_path: Path) -> None:
    """A second ingest does not help a client that connects to the first only."""
    report = _check(tmp_path, _two_ingests("ingest", ["workers", "workers-b"]))
    single = {e.node for e in report.elements if e.single_point}
    assert "ingest" in single
