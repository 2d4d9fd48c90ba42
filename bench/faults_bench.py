"""Fault benchmark: detection and recovery times of each injected fault, on the real pipeline.

For each fault a fresh pipeline is launched and driven in closed loop until NORMAL, the fault
is injected, and the bench measures detection (fault -> DEGRADED, or the fault noticed, e.g.
the node restarted) and recovery (fault -> NORMAL), and counts requests affected (ended with a
typed error, or took more than 10x the steady p50) and lost (no reply at all: must be 0,
except for a killed ingest, whose open requests die with it and end at the client with its
local deadline error; recovery there is a result for a request sent after the restart).
`--json PATH` writes heartbeat_ms and faults: [{name, detect_ms, recover_ms, affected, lost}].
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.worker import FAULT_ABORT_STREAM
from vigil.schemas import SafetyState
from vigil.testing.pipeline import LoadDriver, classifier_launch

HEARTBEAT_MS = 100


def _pid(launcher: Launcher, label: str) -> int:
    return next(c.pid for c in launcher.children if c.plan.label == label)


def _restarted(launcher: Launcher, label: str, old: int) -> Callable[[], bool]:
    return lambda: any(
        c.plan.label == label and c.pid != old and c.ready for c in launcher.children
    )


def _kill(label: str, sig: signal.Signals) -> Callable[[Launcher, LoadDriver], None]:
    def inject(launcher: Launcher, driver: LoadDriver) -> None:
        os.kill(_pid(launcher, label), sig)

    return inject


def _abort(launcher: Launcher, driver: LoadDriver) -> None:
    driver.send(stream_id=FAULT_ABORT_STREAM)


FAULTS: dict[str, tuple[Callable[[Launcher, LoadDriver], None], str]] = {
    "worker SIGKILL": (_kill("worker.1", signal.SIGKILL), "worker.1"),
    "worker SIGSTOP (hang, SIGCONT after 1 s)": (_kill("worker.2", signal.SIGSTOP), "worker.2"),
    "engine abort in a worker": (_abort, ""),
    "proxy SIGKILL": (_kill("proxy", signal.SIGKILL), "proxy"),
    "watchdog SIGKILL": (_kill("watchdog", signal.SIGKILL), "watchdog"),
    "logger SIGKILL": (_kill("logger", signal.SIGKILL), "logger"),
    "ingest SIGKILL": (_kill("ingest", signal.SIGKILL), "ingest"),
}


def measure(name: str, folder: Path) -> dict[str, object]:
    inject, label = FAULTS[name]
    path = classifier_launch(folder, heartbeat_ms=HEARTBEAT_MS)
    run = RunDir(folder / "run")
    with Launcher(load(path, run.path), run) as launcher:
        launcher.start()
        with LoadDriver(launcher) as driver:
            driver.run_until(
                lambda: driver.state is SafetyState.NORMAL and len(driver.outcomes) > 50,
                30,
                "steady state",
            )
            steady = [(o.done_ns - o.sent_ns) / 1e6 for o in driver.outcomes if o.result]
            slow_ms = 10 * float(np.percentile(steady, 50))
            old_pid = _pid(launcher, label) if label else 0
            t0 = time.monotonic_ns()
            inject(launcher, driver)
            # Worker faults degrade the system; a killed proxy, logger or watchdog is noticed
            # by the launcher (its exit) and healed by a restart, without degrading.
            degrades = not label or label.startswith("worker")
            if degrades:
                detected = driver.run_until(
                    lambda: driver.reached(SafetyState.DEGRADED, t0), 15, "detection"
                )
            else:
                detected = driver.run_until(_restarted(launcher, label, old_pid), 15, "restart")
            if "SIGSTOP" in name:
                driver.run_for(1.0)
                os.kill(old_pid, signal.SIGCONT)
            # Recovered: NORMAL again (worker faults), or restarted and a request sent after
            # the restart answered with a result (a killed ingest drops what it held).
            recovered = driver.run_until(
                lambda: (
                    (not degrades or driver.reached(SafetyState.NORMAL, t0))
                    and (
                        not label
                        or label.startswith("worker")
                        or any(o.result is not None for o in driver.ended_since(detected))
                    )
                ),
                30,
                "recovery",
            )
            driver.drain()
            after = driver.ended_since(t0 - 5_000_000_000)
            affected = [
                o for o in after if o.error is not None or (o.done_ns - o.sent_ns) / 1e6 > slow_ms
            ]
            lost = [o for o in driver.outcomes if o.lost]
    return {
        "name": name,
        "detect_ms": round((detected - t0) / 1e6, 1),
        "recover_ms": round((recovered - t0) / 1e6, 1),
        "affected": len(affected),
        "lost": len(lost),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil bench faults", description=__doc__)
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--only", default=None, help="run the faults whose name contains this")
    args = parser.parse_args(argv)
    results = []
    for name in FAULTS:
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory(prefix="vg-fault-", dir="/tmp") as tmp:
            results.append(measure(name, Path(tmp)))
    print(f"heartbeat period {HEARTBEAT_MS} ms (detection goal: within 3 periods)")
    print(f"{'fault':<42}{'detect ms':>10}{'recover ms':>12}{'affected':>10}{'lost':>6}")
    for r in results:
        print(
            f"{r['name']:<42}{r['detect_ms']:>10}{r['recover_ms']:>12}"
            f"{r['affected']:>10}{r['lost']:>6}"
        )
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps({"heartbeat_ms": HEARTBEAT_MS, "faults": results}, indent=2)
        )
    return 0 if all(r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
