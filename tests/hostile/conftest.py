"""One launched pipeline for the whole hostile-client suite, and the tools to attack it.

The pipeline serves the small classifier (two workers) behind an ingest with small limits, a
watchdog and a logger whose store is small enough that a flood of unbounded evidence would
overwrite its start-up entries. Each attack runs as its own process (its own peer) while a
well-behaved client in this process keeps a steady pace beside it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vigil.bus.rundir import RunDir
from vigil.launch import Launcher, load
from vigil.nodes.ingest import IngestConfig, RateLimitConfig, rss_budget
from vigil.nodes.logger import LoggerConfig
from vigil.nodes.logger.store import StoreConfig
from vigil.nodes.watchdog import ProbeConfig, WatchdogConfig
from vigil.schemas import SafetyState
from vigil.testing.hostile import AttackProcess, PacedClient, Watch
from vigil.testing.launchfiles import launch_file, node, write
from vigil.testing.modelgen import signed_pair
from vigil.testing.pipeline import classifier_serving

# The ingest's limits under attack: frames up to 64x64, a queue of 256 KiB.
FRAME_LIMIT = 64
INGEST = IngestConfig(
    max_height=FRAME_LIMIT,
    max_width=FRAME_LIMIT,
    max_message_bytes=16 * 1024,
    max_queue=64,
    max_queue_bytes=256 * 1024,
    max_connections=16,
    max_connections_per_peer=4,
    reply_backlog=32,
    default_deadline_ms=3000,
    # A flood above the well-behaved client's priority is held to this per peer process.
    peer_rate_limit=RateLimitConfig(rate_per_s=300.0, burst=64.0),
)
OPEN_FILES = 256
BUDGET = rss_budget(INGEST)
GOOD_RATE_HZ = 40
GOOD_FRAME = np.full((32, 32, 3), 90, dtype=np.uint8)


class Hostile(Watch):
    """The launched pipeline, its good client, the states and beats, and the attacks."""

    def until(self, done: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        """Drive until `done()`; fail after `timeout_s`."""
        assert self.drive(done, timeout_s), f"{what}: not within {timeout_s} s"

    def run(
        self, name: str, *args: str, hold_until: Callable[[], bool] | None = None
    ) -> dict[str, Any]:
        """Run an attack to its end beside the good client; returns the attacker's summary.

        A holding attacker is let go once `hold_until()` holds (at once without one).
        """
        attack = AttackProcess(self.endpoint, name, *args)
        try:
            self.until(lambda: attack.poll() or attack.done, f"{name} under way")
            if attack.holding:
                if hold_until is not None:
                    self.until(hold_until, f"{name}: the condition to let go")
                attack.release()
            self.until(lambda: attack.done, f"{name} finished")
            assert attack.popen.returncode == 0, f"{name} failed"
            self.until(lambda: bool(attack.poll() and attack.summary), f"{name} summary", 10)
        finally:
            attack.close()
        return attack.summary

    def settle(self, start_ns: int, count: int = 40) -> None:
        """Keep the good client going until `count` of its requests sent since `start_ns`
        have ended (so every attack is judged on at least that many)."""
        self.until(lambda: len(self.good.since(start_ns)) >= count, "the good client's requests")

    def assert_unharmed(self, start_ns: int, pid: int) -> None:
        """The good client kept >= 99 % success, the state stayed NORMAL, the ingest neither
        restarted nor outgrew its memory budget."""
        self.settle(start_ns)
        outcomes = self.good.since(start_ns)
        failed = [o.code for o in outcomes if not o.ok]
        assert len(failed) <= len(outcomes) // 100, f"good client failed: {failed[:10]}"
        assert [s.state for s in self.seen] == [SafetyState.NORMAL] * len(self.seen)
        assert self.ingest_pid == pid, "the ingest exited"
        assert peak_rss(pid) <= BUDGET, "over the memory budget"


def peak_rss(pid: int) -> int:
    """A process's peak resident set size (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise LookupError("no VmHWM")


def hostile_launch(folder: Path) -> Path:
    """The classifier pipeline with the suite's ingest limits and a small sealed store."""
    root, trusted, _ = signed_pair(folder)
    _, loader, workers = classifier_serving(root, trusted)
    # 8 groups of 1 MiB: unbounded refusal evidence would wrap it within one flood.
    store = StoreConfig(path="log.store", size_bytes=8 << 20, group_bytes=1 << 20)
    launch = launch_file(
        "hostile",
        node("logger", LoggerConfig(store=store)),
        loader,
        workers,
        # The open-file limit of docs/security.md's example: a connection storm reaches it.
        node("ingest", INGEST, limits={"open_files": OPEN_FILES}, restart={"max_restarts": 0}),
        # Heartbeats may be 2 s late before they count as missing: the suite shares a loaded
        # 2-core host with its attackers, and judges the ingest, not the host's scheduler (a
        # node stalled by an attack for seconds is still caught).
        node(
            "watchdog",
            WatchdogConfig(heartbeat_timeout_ms=2000, probe=ProbeConfig(height=32, width=32)),
        ),
        heartbeat_ms=200,
    )
    return write(launch, folder)


@pytest.fixture(scope="session")
def hostile() -> Iterator[Hostile]:
    """The launched pipeline in NORMAL, its good client at a steady pace."""
    with tempfile.TemporaryDirectory(prefix="vg-", dir="/tmp") as tmp:
        folder = Path(tmp)
        run = RunDir(folder / "run")
        with Launcher(load(hostile_launch(folder), run.path), run) as launcher:
            launcher.start()
            good = PacedClient(
                run.ipc("ingest"), ctx=launcher.ctx, rate_hz=GOOD_RATE_HZ, frame=GOOD_FRAME
            )
            pipeline = Hostile(launcher, good)
            try:
                start = time.monotonic_ns()
                pipeline.until(
                    lambda: (
                        bool(pipeline.seen)
                        and pipeline.seen[-1].state is SafetyState.NORMAL
                        and sum(o.ok for o in good.since(start)) >= 20
                    ),
                    "steady state",
                )
                pipeline.seen.clear()
                yield pipeline
            finally:
                pipeline.close()
