"""Ingest under attack: what a well-behaved client keeps beside each hostile client.

The demo pipeline (launch/demo.yaml: PP-OCRv4 text detection, its workers, ingest, watchdog,
logger; its demo source and sink left out) serves a well-behaved client sending scene frames
at a steady pace, first unattacked (`--base-s`, long enough that its p99 rests on as many
requests as a flood phase's), then beside each attack class in turn (each attacker its
own process, vigil.testing.hostile, started and ready before its phase begins), all in the
same run. For each phase it prints the
client's success rate, p50 and p99 latency, the ingest's peak resident memory during the
phase, and whether the safety state left NORMAL; at the end, whether the start-up audit
entries are still in the sealed store. `--json PATH` writes the same figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import yaml

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes._scene import render_scene
from vigil.nodes.ingest import IngestConfig, rss_budget
from vigil.nodes.logger.store import read_entries
from vigil.schemas import AuditId, SafetyState
from vigil.testing.hostile import AttackProcess, Outcome, PacedClient, Watch

DEMO = Path(__file__).resolve().parent.parent / "launch" / "demo.yaml"
STARTUP_AUDIT = {AuditId.MODEL_VERIFIED, AuditId.MODEL_COMMITTED, AuditId.STATE_TRANSITION}


def _attacks(open_files: int, max_bytes: int) -> list[tuple[str, list[str]]]:
    return [
        ("zero-budget storm", ["zero-budget", "--count", "3000"]),
        ("zero-budget storm at p7", ["zero-budget", "--count", "3000", "--priority", "7"]),
        ("stream poisoning", ["poison", "--stream", "good", "--count", "3"]),
        ("flood, one peer", ["flood", "--count", "50000"]),
        ("flood, tenant per request", ["flood", "--count", "50000", "--tenant", "*"]),
        ("flood, spoofed tenant", ["flood", "--count", "50000", "--tenant", "good"]),
        ("flood at p7 (nodes only)", ["flood", "--count", "50000", "--priority", "7"]),
        ("flood at p3 (not granted)", ["flood", "--count", "50000", "--priority", "3"]),
        (
            "oversize frames (256 MiB)",
            ["oversize", "--count", "4", "--bytes", str(256 << 20), "--seconds", "0.5"],
        ),
        (
            "queue fill, 1080p frames",
            ["flood", "--count", "300", "--size", "1080", "--width", "1920"],
        ),
        ("unread replies", ["unread", "--count", "50000"]),
        ("connection storm", ["connections", "--count", str(2 * open_files)]),
        (
            "half-sent + endless messages",
            ["half", "--count", "6", "--bytes", str(max_bytes), "--seconds", "10"],
        ),
        ("decode bombs (6.2M arrays)", ["bomb", "--count", "100", "--bytes", "6200000"]),
    ]


def _launch(folder: Path, workers: int) -> Path:
    """The demo launch file without its demo source and sink (the bench is the client)."""
    launch = yaml.safe_load(DEMO.read_text())
    launch["nodes"] = [n for n in launch["nodes"] if n["kind"] not in ("demo_source", "demo_sink")]
    launch["arguments"]["workers"]["default"] = workers
    path = folder / "demo-ingest.yaml"
    path.write_text(yaml.safe_dump(launch, sort_keys=False))
    return path


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak(pid: int) -> None:
    """Start a new peak-RSS window (writing 5 to clear_refs resets VmHWM)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _phase(watch: Watch, name: str, attack: list[str] | None, seconds: float) -> dict[str, Any]:
    """One phase: `attack` (or none) beside the good client for `seconds` at least."""
    pid = watch.ingest_pid
    _reset_peak(pid)
    summary: dict[str, Any] = {}
    if attack is not None:
        # The attacker starts, and builds what it sends, before the phase does: the attack
        # is its traffic, not a Python process starting up and encoding on the same cores.
        process = AttackProcess(watch.endpoint, *attack, armed=True)
        watch.drive(lambda: (process.poll() or process.armed) or process.done, 60)
        start, seen = time.monotonic_ns(), len(watch.seen)
        process.fire()
        try:
            # The phase lasts `seconds` at least, and as long as the attack runs; a holding
            # attacker holds until then.
            end = time.monotonic() + seconds
            watch.drive(
                lambda: (process.poll() or process.done) and time.monotonic() >= end,
                seconds * 8,
            )
            process.release()
            watch.drive(lambda: process.done, 120)
            watch.drive(lambda: bool(process.poll() and process.summary), 10)
            summary = process.summary
        finally:
            process.close()
    else:
        start, seen = time.monotonic_ns(), len(watch.seen)
        watch.drive(lambda: False, seconds)
    # The requests sent during the phase, each to its end.
    sent_until = time.monotonic_ns()
    watch.drive(lambda: watch.good.client.in_flight == 0, 30)
    outcomes = [o for o in watch.good.since(start) if o.sent_ns <= sent_until]
    return {
        "phase": name,
        **_figures(outcomes),
        "ingest_peak_rss_mib": _status(pid, "VmHWM:") / (1 << 20),
        "states": [f"{s.state.value} ({s.cause})" for s in watch.seen[seen:]],
        "ingest_alive": watch.ingest_pid == pid,
        "attacker": summary,
    }


def _figures(outcomes: list[Outcome]) -> dict[str, Any]:
    """The good client's success rate, latency percentiles and errors."""
    latencies = [o.latency_ms for o in outcomes if o.ok]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            errors[o.code] = errors.get(o.code, 0) + 1
    return {
        "requests": len(outcomes),
        "success": sum(o.ok for o in outcomes) / max(1, len(outcomes)),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "errors": errors,
    }


def _startup_audit_kept(run: RunDir) -> bool:
    events = set()
    for entry in read_entries(run.path / "log.store"):
        if entry.event == "audit.event":
            events.add(msgspec.msgpack.decode(entry.payload)["event"])
    return events >= STARTUP_AUDIT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil bench ingest", description=__doc__)
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument("--rate-hz", type=float, default=2.0, help="the good client's pace")
    parser.add_argument("--deadline-s", type=float, default=3.0)
    parser.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    parser.add_argument(
        "--base-s",
        type=float,
        default=30.0,
        help="seconds of the unattacked phase: its p99 rests on as many requests as a flood's",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="run only phases whose name has this")
    args = parser.parse_args(argv)
    config = IngestConfig(default_deadline_ms=3000)
    budget = rss_budget(config)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vg-bench-", dir="/tmp") as tmp:
        folder = Path(tmp)
        run = RunDir(folder / "run")
        with Launcher(load(_launch(folder, args.workers), run.path), run) as launcher:
            launcher.start()
            good = PacedClient(
                run.ipc("ingest"),
                ctx=launcher.ctx,
                rate_hz=args.rate_hz,
                frame=render_scene(0, 384, 640),
                deadline_s=args.deadline_s,
            )
            watch = Watch(launcher, good)
            try:
                watch.drive(
                    lambda: bool(watch.seen) and watch.seen[-1].state is SafetyState.NORMAL, 60
                )
                watch.drive(lambda: sum(o.ok for o in good.outcomes) >= 10, 120)
                open_files = _open_files(watch.ingest_pid)
                rows.append(_phase(watch, "unattacked", None, max(args.base_s, args.phase_s)))
                for name, attack in _attacks(open_files, config.max_message_bytes):
                    if args.only and args.only not in name:
                        continue
                    rows.append(_phase(watch, name, attack, args.phase_s))
                    if not rows[-1]["ingest_alive"]:
                        break
            finally:
                watch.close()
        kept = _startup_audit_kept(run)
    _print(rows, budget, kept)
    if args.json:
        report = {
            "pipeline": "launch/demo.yaml (source and sink left out)",
            "good_client": {"rate_hz": args.rate_hz, "deadline_s": args.deadline_s},
            "ingest_rss_budget_mib": budget / (1 << 20),
            "startup_audit_kept": kept,
            "phases": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 1024


def _print(rows: list[dict[str, Any]], budget: int, kept: bool) -> None:
    base = rows[0]["p99_ms"] if rows and rows[0]["p99_ms"] else None
    print(f"ingest RSS budget (defaults): {budget / (1 << 20):.0f} MiB")
    print(
        f"{'phase':<30} {'n':>4} {'ok %':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/base':>8} "
        f"{'RSS MiB':>8}  state"
    )
    for r in rows:
        p50 = f"{r['p50_ms']:.0f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.0f}" if r["p99_ms"] is not None else "-"
        ratio = f"{r['p99_ms'] / base:.2f}" if base and r["p99_ms"] is not None else "-"
        state = ", ".join(s.split(" (")[0] for s in r["states"]) or "NORMAL"
        alive = "" if r["ingest_alive"] else "  INGEST GONE"
        print(
            f"{r['phase']:<30} {r['requests']:>4} {100 * r['success']:>7.2f} {p50:>8} {p99:>8} "
            f"{ratio:>8} {r['ingest_peak_rss_mib']:>8.0f}  {state}{alive}"
        )
    print(f"start-up audit entries kept: {'yes' if kept else 'NO'}")


if __name__ == "__main__":
    raise SystemExit(main())
