"""`vigil demo`: the main job: run the demo pipeline, stop it, verify its log, summarise.

The demo passes when every rule of `RULES` holds; the summary prints each rule with its
verdict, so a failed demo names what failed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click
import structlog
from rich.console import Console
from rich.table import Table

from vigil.bus.pubsub import Subscriber
from vigil.errors import ConfigError
from vigil.launch import Launcher, LaunchError, load
from vigil.nodes.logger.store import VerifyReport, load_verifier, verify_store
from vigil.schemas import StateChange, Topic
from vigil.tools._options import json_option, new_run_dir_option
from vigil.tools._rundirs import new_run_dir

__all__ = ["RULES", "Rule", "demo", "judge", "log_verdict", "run_demo"]

LOAD_SHED: Final = "RESOURCE_EXHAUSTED"
"""The code of a request refused for load: the pipeline's answer to overload, not a fault."""
MAX_SHED_SHARE: Final = 0.05


def _latched_state(launcher: Launcher, timeout_ms: int = 2000) -> str:
    """The current safety state: the proxy re-sends the latched value to a new subscriber."""
    with Subscriber(
        launcher.ctx, launcher.run.sub, [Topic.SAFETY_STATE], skip_replayed=True
    ) as sub:
        received = sub.recv(timeout_ms)
        if received is not None and isinstance(received.body, StateChange):
            return str(received.body.state)
    return "UNKNOWN"


def log_verdict(report: VerifyReport, evidence: VerifyReport) -> dict[str, Any]:
    """What `vigil log verify` says of the run's log and evidence store, as two separate
    answers: are the entries intact (seals, chain, sequence, time order, signatures), and
    which clock stamped them (the store's own words)."""
    integrity = [
        f"{where}{f.fault} {f.where}: {f.detail}"
        for where, r in (("", report), ("evidence store: ", evidence))
        for f in r.faults
        if f.fault != "CLOCK"
    ]
    return {
        "entries": report.entries,
        "intact": report.ok and evidence.ok,
        "verdict": f"{report.verdict}, evidence store {evidence.verdict}",
        "integrity_faults": integrity,
        "signatures": report.signatures,
        "time_quality": report.time_quality,
        "clock_sources": dict(report.clock_sources),
        "verify_exit_code": report.exit_code,
    }


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
    log = log_verdict(
        verify_store(run.path / "log.store", key=key),
        verify_store(run.path / "log.evidence", key=key),
    )
    return {
        "run_dir": str(run.path),
        "sent": source["sent"],
        "sent_invalid": source["sent_invalid"],
        "skipped": source["skipped"],
        "answered": source["answered"],
        "rejected": source["rejected"],
        "errors": source["errors"],
        "error_codes": source["error_codes"],
        "unanswered": source["unanswered"],
        "boxes": source["boxes"],
        "throughput_rps": round(source["answered"] / elapsed, 2) if elapsed else 0.0,
        "latency_ms": source["latency_ms"],
        "pacing": source["pacing"],
        "final_state": final_state,
        "log_entries": log["entries"],
        "log_verified": log["intact"],
        "log": log,
        "launcher_exit": code,
        "driven_s": round(elapsed, 2),
        "wall_s": round(wall, 2),
    }


@dataclass(frozen=True, slots=True)
class Rule:
    """One condition the demo must meet, and how to say what was found."""

    name: str
    holds: Callable[[dict[str, Any]], bool]
    found: Callable[[dict[str, Any]], str]


def _valid(s: dict[str, Any]) -> int:
    return int(s["sent"] - s["sent_invalid"])


def _shed(s: dict[str, Any]) -> int:
    return int(s["error_codes"].get(LOAD_SHED, 0))


def _failures(s: dict[str, Any]) -> str:
    codes = [f"{code} {n}" for code, n in s["error_codes"].items() if code != LOAD_SHED]
    return ", ".join(codes + ([f"unanswered {s['unanswered']}"] if s["unanswered"] else []))


RULES: Final = (
    Rule(
        "the pipeline answered",
        lambda s: s["answered"] > 0,
        lambda s: f"{s['answered']} of {_valid(s)} valid frames with a result",
    ),
    Rule(
        "every invalid frame rejected with INVALID_ARGUMENT",
        lambda s: s["rejected"] == s["sent_invalid"],
        lambda s: f"{s['rejected']} of {s['sent_invalid']}",
    ),
    Rule(
        "no request failed or went unanswered",
        lambda s: s["errors"] == _shed(s) and s["unanswered"] == 0,
        lambda s: _failures(s) or "none",
    ),
    Rule(
        f"at most {MAX_SHED_SHARE:.0%} of valid frames refused for load ({LOAD_SHED})",
        lambda s: _shed(s) <= MAX_SHED_SHARE * _valid(s),
        lambda s: f"{_shed(s)} of {_valid(s)}",
    ),
    Rule(
        "safety state NORMAL at the end, launcher stopped cleanly",
        lambda s: s["final_state"] == "NORMAL" and s["launcher_exit"] == 0,
        lambda s: f"{s['final_state']}, exit {s['launcher_exit']}",
    ),
    Rule(
        "sealed log intact (seals, chain, sequence, time order)",
        lambda s: bool(s["log"]["intact"]),
        lambda s: "; ".join(s["log"]["integrity_faults"]) or f"{s['log_entries']} entries",
    ),
)
"""What `vigil demo` checks, in order. Time quality is reported, not judged: a machine
without a PTP clock stamps the log with a fallback clock, and says so."""


def judge(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each rule with whether it holds and what was found."""
    return [{"rule": r.name, "passed": r.holds(summary), "found": r.found(summary)} for r in RULES]


def _integrity(log: dict[str, Any]) -> str:
    return f"{'verified' if log['intact'] else 'FAULTS'} ({log['verdict']})"


def _pacing(p: dict[str, Any]) -> str:
    if p.get("mode") != "adaptive":
        return f"fixed, {p.get('rate_hz')} frames/s"
    if p["phase"] != "driving":
        return "still measuring when the demo ended"
    text = (
        f"this machine sustained {p['sustained_hz']:.1f} results/s; "
        f"driven at {p['planned_hz']:.1f} frames/s"
    )
    if p["backoffs"]:
        text += f", backed off {p['backoffs']}x (ended at {p['rate_hz']:.1f})"
    return text


def _sent(s: dict[str, Any]) -> str:
    text = f"{s['sent']} ({s['sent_invalid']} deliberately invalid"
    if s["skipped"]:
        text += f"; {s['skipped']} more skipped while the pipeline was busy"
    return text + ")"


def _print(summary: dict[str, Any], verdicts: list[dict[str, Any]]) -> None:
    console = Console()
    table = Table(title="vigil demo", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    errors = ", ".join(f"{c} {n}" for c, n in summary["error_codes"].items())
    rows = [
        ("frames sent", _sent(summary)),
        ("pace", _pacing(summary["pacing"])),
        ("answered with a result", str(summary["answered"])),
        ("rejected (INVALID_ARGUMENT)", str(summary["rejected"])),
        ("errors", f"{summary['errors']} ({errors})" if errors else "0"),
        ("text boxes found", str(summary["boxes"])),
        ("throughput", f"{summary['throughput_rps']} results/s"),
        ("latency p50 / p99", "{p50:.1f} / {p99:.1f} ms".format(**summary["latency_ms"])),
        ("final safety state", summary["final_state"]),
        ("sealed log entries", str(summary["log_entries"])),
        ("log integrity", _integrity(summary["log"])),
        ("log signatures", summary["log"]["signatures"] or "-"),
        ("log time", summary["log"]["time_quality"]),
        ("run directory", summary["run_dir"]),
    ]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    for v in verdicts:
        mark = "[green]pass[/]" if v["passed"] else "[bold red]FAIL[/]"
        console.print(f"{mark}  {v['rule']}: {v['found']}", highlight=False)
    failed = [v["rule"] for v in verdicts if not v["passed"]]
    if failed:
        console.print(f"[bold red]demo failed[/]: {'; '.join(failed)}", highlight=False)
    else:
        console.print("[green]demo passed[/]")


@click.command("demo")
@click.option("--launch", "launch_file", default="launch/demo.yaml", show_default=True)
@click.option("--duration", type=float, default=20.0, show_default=True)
@new_run_dir_option
@click.option("--summary", "summary_path", default="run/demo-summary.json", show_default=True)
@json_option
def demo(
    launch_file: str, duration: float, run_dir: str | None, summary_path: str, as_json: bool
) -> None:
    """Bring the demo pipeline up on CPU, drive it below what this machine sustains, shut it
    down and summarise.

    Exits 0 when every rule printed holds, 1 naming the rules that failed.
    """
    # The nodes' own logs go to the run directory; here only warnings interrupt the summary.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    click.echo(
        f"vigil demo: starting {launch_file}; the source measures what this machine sustains, "
        f"then drives the pipeline below it for {duration:g} s",
        err=True,
    )
    try:
        summary = run_demo(launch_file, duration, run_dir)
    except (ConfigError, LaunchError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # the run directory cannot be made (a full disk): one line
        click.echo(f"error: {exc.filename or 'run directory'}: {exc.strerror}", err=True)
        sys.exit(1)
    verdicts = judge(summary)
    summary["rules"] = verdicts
    summary["passed"] = all(v["passed"] for v in verdicts)
    path = Path(summary_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print(summary, verdicts)
    sys.exit(0 if summary["passed"] else 1)
