"""Tables fit 80 columns: free text wraps, short cells stay whole, nothing becomes an ellipsis."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vigil.launch import Finding, Level
from vigil.launch.check import check_file, format_report
from vigil.tools.doctor_cmd import check_versions, findings_table
from vigil.tools.node_cmd import NodeRow, node_lines
from vigil.tools.topic_cmd import topics_table

ROOT = Path(__file__).resolve().parents[3]
WORKERS = [f"worker.{i}" for i in range(1, 9)]


def _render(renderable: Table, width: int = 80) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(renderable)
    return out.getvalue().splitlines()


def _words(lines: list[str]) -> set[str]:
    return {w for line in lines for w in line.split()}


def test_doctor_findings_fit_80_columns_whole() -> None:
    """Long check names and details wrap within 80 columns; every word of a detail and of
    its fix is printed, none cut to an ellipsis."""
    long_path = "/srv/vigil/run/demo-20260101-000000/" + "nested/" * 6 + "log.store"
    findings = [
        *check_versions(),
        Finding(
            level=Level.WARNING,
            check=f"disk {long_path}",
            detail="store 64.0 MiB, 70.7 GiB free of 252.0 GiB on a file system that is shared",
            fix="move the store to a partition of its own, or lower store.size_bytes",
        ),
    ]
    lines = _render(findings_table(findings))
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines)
    for f in findings:
        assert set(f.detail.split()) <= _words(lines)
        assert set(f.fix.split()) <= _words(lines)
    header = next(line for line in lines if line.startswith("level"))
    start, end = header.index("check"), header.index("finding")
    checks = "".join(line[start:end].strip() for line in lines[lines.index(header) + 2 :])
    assert f"disk{long_path}" in checks


def test_topic_list_fits_80_columns_with_every_node_named() -> None:
    """A topic many nodes publish wraps its list of nodes; names stay whole."""
    rows = [
        {
            "topic": "health/heartbeat",
            "type": "health.heartbeat",
            "publishers": ["ingest", "loader", "logger", "metrics", "proxy", *WORKERS],
            "subscribers": ["ingest", "loader", "metrics", "watchdog"],
        }
    ]
    lines = _render(topics_table(rows))
    assert max(len(line) for line in lines) <= 80
    assert {*rows[0]["publishers"], *rows[0]["subscribers"]} <= {
        w.rstrip(",") for w in _words(lines)
    }
    assert "health/heartbeat" in lines[2] and "health.heartbeat" in lines[2]


def _node(name: str, detail: dict[str, str]) -> NodeRow:
    return NodeRow(
        name=name, kind="worker", pid=12345, status="alive", heartbeat_age_ms=12.0,
        period_ms=200, restarts=0, detail=detail,
    )  # fmt: skip


def test_node_list_moves_a_long_detail_under_its_row_at_80_columns() -> None:
    """At 80 columns the heartbeat detail goes under its row, wrapped; on a wide terminal it
    ends the row."""
    detail = {f"counter_{i}": str(i * 1000) for i in range(12)}
    rows = [_node("worker.1", detail), _node("worker.2", {"loop_age_ms": "3"})]
    narrow = node_lines(rows, 80)
    assert max(len(line) for line in narrow) <= 80
    assert narrow[1].split() == ["worker.1", "worker", "12345", "alive", "12", "ms", "0"]
    assert narrow[2].startswith("    counter_0=0 counter_1=1000")
    assert {f"{k}={v}" for k, v in detail.items()} <= _words(narrow)
    wide = node_lines(rows, 400)
    assert len(wide) == 3 and wide[0].endswith("DETAIL") and wide[1].endswith("counter_9=9000")


def test_graph_report_fits_80_columns() -> None:
    """`vigil graph check` of the demo launch file wraps every line within 80 columns."""
    report = check_file(str(ROOT / "launch" / "demo.yaml"))
    lines = format_report(report, width=80).splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("  health/heartbeat") for line in lines)
