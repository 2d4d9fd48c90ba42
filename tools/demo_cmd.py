"""`vigil demo`: the main job: run the demo pipeline, stop it, verify its log, summarise."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
import structlog
from rich.console import Console
from rich.table import Table

from vigil.bus.pubsub import Subscriber
from vigil.errors import ConfigError
from vigil.launch import Launcher, LaunchError, load
from vigil.nodes.logger.store import load_verifier, verify_store
from vigil.schemas import StateChange, Topic
from vigil.tools._options import new_run_dir_option
from vigil.tools._rundirs import new_run_dir

__all__ = ["demo", "run_demo"]


def _latched_state(launcher: Launcher, timeout_ms: int = 2000) -> str:
    """The current safety state: the proxy re-sends the latched value to a new subscriber."""
    with Subscriber(
        launcher.ctx, launcher.run.sub, [Topic.SAFETY_STATE], skip_replayed=True
    ) as sub:
        received = sub.recv(timeout_ms)
        if received is not None and isinstance(received.body, StateChange):
            return str(received.body.state)
    return "UNKNOWN"


def run_demo(launch_file: str, duration: float, run_dir: str | None) -> dict[str, Any]:
    """Run the demo for `duration` seconds and return its summary."""
    name = load(launch_file, "run/<new>").launch.name
    run = new_run_dir(name, run_dir)
    plan = load(launch_file, run.path)
    started = time.monotonic()
    with Launcher(plan, run) as launcher:
        launcher.start()
        driven = time.monotonic()
        code = launcher.supervise(duration)
        elapsed = time.monotonic() - driven
        final_state = _latched_state(launcher)
    wall = time.monotonic() - started
    source = json.loads((run.path / "source-report.json").read_text())
    # The logger signed its checkpoints with a key it generated into the run directory.
    public = run.path / "log.pub"
    key = load_verifier(public) if public.exists() else None
    report = verify_store(run.path / "log.store", key=key)
    evidence = verify_store(run.path / "log.evidence", key=key)
    return {
        "run_dir": str(run.path),
        "sent": source["sent"],
        "sent_invalid": source["sent_invalid"],
        "answered": source["answered"],
        "rejected": source["rejected"],
        "errors": source["errors"],
        "error_codes": source["error_codes"],
        "boxes": source["boxes"],
        "throughput_rps": round(source["answered"] / elapsed, 2) if elapsed else 0.0,
        "latency_ms": source["latency_ms"],
        "final_state": final_state,
        "log_entries": report.entries,
        "log_verified": bool(report.ok and evidence.ok),
        "log_verdict": f"{report.verdict}, evidence store {evidence.verdict}",
        "log_signatures": report.signatures,
        "log_time": report.time_quality,
        "launcher_exit": code,
        "driven_s": round(elapsed, 2),
        "wall_s": round(wall, 2),
    }


def _print(summary: dict[str, Any]) -> None:
    table = Table(title="vigil demo", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("frames sent", f"{summary['sent']} ({summary['sent_invalid']} deliberately invalid)"),
        ("answered with a result", str(summary["answered"])),
        ("rejected (INVALID_ARGUMENT)", str(summary["rejected"])),
        ("errors", f"{summary['errors']} {summary['error_codes'] or ''}".strip()),
        ("text boxes found", str(summary["boxes"])),
        ("throughput", f"{summary['throughput_rps']} results/s"),
        ("latency p50 / p99", "{p50:.1f} / {p99:.1f} ms".format(**summary["latency_ms"])),
        ("final safety state", summary["final_state"]),
        ("sealed log entries", str(summary["log_entries"])),
        ("log verified", "yes" if summary["log_verified"] else "NO"),
        ("log verdict", summary["log_verdict"]),
        ("log signatures", summary["log_signatures"]),
        ("log time", summary["log_time"]),
        ("run directory", summary["run_dir"]),
    ]
    for what, value in rows:
        table.add_row(what, value)
    Console().print(table)


@click.command("demo")
@click.option("--launch", "launch_file", default="launch/demo.yaml", show_default=True)
@click.option("--duration", type=float, default=20.0, show_default=True)
@new_run_dir_option
@click.option("--summary", "summary_path", default="run/demo-summary.json", show_default=True)
def demo(launch_file: str, duration: float, run_dir: str | None, summary_path: str) -> None:
    """Bring the demo pipeline up on CPU, drive it below what this machine sustains, shut it
    down and summarise."""
    # The nodes' own logs go to the run directory; here only warnings interrupt the summary.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        summary = run_demo(launch_file, duration, run_dir)
    except (ConfigError, LaunchError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    path = Path(summary_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    _print(summary)
    ok = summary["answered"] > 0 and summary["errors"] == 0 and summary["log_verified"]
    sys.exit(0 if ok else 1)
