"""Binary audit records sealed by the logger for real decisions, read back by `vigil log audit`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.logger.store import read_entries
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import FAST_INGEST, FAST_WATCHDOG, classifier_serving
from vigil.tools.cli import cli

pytestmark = pytest.mark.verifies("SR-LOG-003")


def _audit(store: Path, *args: str) -> list[dict[str, object]]:
    shown = CliRunner().invoke(cli, ["log", "audit", str(store), "--json", *args])
    assert shown.exit_code == 0, shown.output
    return [json.loads(line) for line in shown.output.splitlines()]


def _has(rows: list[dict[str, object]], event: str, instance_id: int, node: str) -> bool:
    return any(
        r["event"] == event and r["instance_id"] == instance_id and r["node"] == node for r in rows
    )


def test_logger_seals_binary_audit_records_of_a_real_pipeline(short_tmp: Path) -> None:
    """A launched pipeline's decisions (its configuration, every node started, the model
    verified and committed, the watchdog's state) are sealed as binary audit records whose
    ids map to their classes and whose instance is the id the launch file gave the node."""
    root, trusted, _ = signed_pair(short_tmp)
    launch = launch_file(
        "audited",
        *classifier_serving(root, trusted, workers=1),
        node("ingest", FAST_INGEST),
        node("watchdog", FAST_WATCHDOG, instance_id=7000),
    )
    path = write(launch, short_tmp)
    run = RunDir(short_tmp / "run")
    store = run.path / "log.store"
    wanted = [
        ("LAUNCH_CONFIGURED", 0, "launcher"),
        ("MODEL_VERIFIED", 200, "loader"),
        ("MODEL_COMMITTED", 200, "loader"),
        ("STATE_TRANSITION", 7000, "watchdog"),
    ]
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        deadline = time.monotonic() + 30
        while True:
            rows = _audit(store)
            if all(_has(rows, *w) for w in wanted) and sum(
                r["event"] == "NODE_STARTED" for r in rows
            ) == len(launcher.children):
                break
            assert time.monotonic() < deadline, f"audit records so far: {rows}"
            launcher.supervise(0.2)
    rows = _audit(store)
    classes = {r["event"]: r["event_class"] for r in rows}
    assert classes["LAUNCH_CONFIGURED"] == "CONFIGURATION_CHANGE"
    assert classes["MODEL_COMMITTED"] == "SOFTWARE_UPDATE"
    assert classes["STATE_TRANSITION"] == "STATE_CHANGE"
    started = [r["payload"] for r in rows if r["event"] == "NODE_STARTED"]
    assert any(str(p).startswith("watchdog id 7000 pid ") for p in started)
    # Each binary record stands beside the full audit event it was made from.
    events = [e.event for e in read_entries(store)]
    assert events.count("audit.record") == events.count("audit.event") == len(rows)
    only = _audit(store, "--class", "software_update")
    assert only and {r["event_class"] for r in only} == {"SOFTWARE_UPDATE"}
    table = CliRunner().invoke(cli, ["log", "audit", str(store)])
    assert table.exit_code == 0, table.output
    header, *lines = table.output.splitlines()
    assert header.split() == [
        "seq", "time", "(UTC)", "class", "id", "event", "instance", "node", "payload"
    ]  # fmt: skip
    committed = next(line for line in lines if " MODEL_COMMITTED " in line)
    assert committed.split()[2:7] == ["SOFTWARE_UPDATE", "4005", "MODEL_COMMITTED", "200", "loader"]
