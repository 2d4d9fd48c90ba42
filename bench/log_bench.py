"""Benchmark the sealed log store: durable entries/s beside the sealing ceiling, and verify MB/s.

Prints, from one run on one machine:

* durable entries/s: 256-byte payloads appended through `LogStore` with group commit, counted
  once the final commit has returned (every entry msynced), in bursts as the logger appends
  them (`append_many`), and one `append` per entry beside it;
* the compute ceiling: CRC32C + SHA-256 of the same entries with no I/O at all;
* verify throughput in MB/s of store file walked.

`--json PATH` writes `durable_entries_s`, `ceiling_entries_s` and `verify_mb_s`. The benchmark
reports; it never asserts a timing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import crc32c

from vigil.nodes.logger.store import LogStore, StoreConfig, verify_store

PAYLOAD_BYTES = 256


def _payloads(count: int) -> list[bytes]:
    # Distinct payloads, so no layer can profit from repetition.
    seed = os.urandom(PAYLOAD_BYTES)
    return [i.to_bytes(8, "little") + seed[8:] for i in range(count)]


def measure_ceiling(payloads: list[bytes]) -> float:
    """Entries/s for CRC32C + SHA-256(timestamp || payload) alone."""
    sha = hashlib.sha256
    crc = crc32c.crc32c
    now = time.clock_gettime_ns
    began = time.perf_counter()
    for payload in payloads:
        crc(payload)
        sha(now(time.CLOCK_TAI).to_bytes(8, "little") + payload).digest()
    return len(payloads) / (time.perf_counter() - began)


def measure_durable(
    path: str, payloads: list[bytes], latency_ms: float, group_bytes: int, burst: int
) -> tuple[float, LogStore]:
    """Entries/s appended and made durable through the store's group commit; `burst` records
    per `append_many` call, or one `append` call per entry when it is 1."""
    size = max(64 << 20, len(payloads) * 448 * 2)
    config = StoreConfig(
        path=path, size_bytes=size, group_bytes=group_bytes, commit_latency_ms=latency_ms
    )
    trace = bytes(range(16))
    records = [("bench", "diag.event", payload, trace) for payload in payloads]
    with LogStore.open(config) as store:
        append, append_many = store.append, store.append_many
        began = time.perf_counter()
        if burst == 1:
            for payload in payloads:
                append(node="bench", event="diag.event", payload=payload, trace_id=trace)
        else:
            for at in range(0, len(records), burst):
                append_many(records[at : at + burst])
        store.commit()
        elapsed = time.perf_counter() - began
    return len(payloads) / elapsed, store


def measure_verify(path: str) -> tuple[float, int]:
    """(MB/s of store walked by verify, entries verified)."""
    began = time.perf_counter()
    report = verify_store(path, allow_fallback_clock=True)
    elapsed = time.perf_counter() - began
    used = report.entries * (PAYLOAD_BYTES + 144)
    return used / elapsed / 1e6, report.entries


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns a process exit code."""
    parser = argparse.ArgumentParser(prog="vigil bench log", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=300_000)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    parser.add_argument("--group-bytes", type=int, default=StoreConfig(path="").group_bytes)
    parser.add_argument(
        "--dir", default=None, help="where the store file goes (default: a temp dir)"
    )
    parser.add_argument(
        "--burst", type=int, default=256, help="records per append_many call (the logger's burst)"
    )
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    payloads = _payloads(args.entries)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = str(Path(tmp) / "bench.vlog")
        ceiling = measure_ceiling(payloads)
        single, _ = measure_durable(
            str(Path(tmp) / "single.vlog"), payloads, args.latency_ms, args.group_bytes, 1
        )
        durable, store = measure_durable(
            path, payloads, args.latency_ms, args.group_bytes, max(1, args.burst)
        )
        verify_mb_s, verified = measure_verify(path)
    stats = store.stats
    print(f"entries               {args.entries:>12,d}  ({PAYLOAD_BYTES}-byte payloads)")
    commit = f"group commit {args.latency_ms} ms, {args.group_bytes >> 10} KiB groups"
    print(f"durable entries/s     {durable:>12,.0f}  (bursts of {args.burst}, {commit})")
    print(f"  one append per call {single:>12,.0f}")
    print(f"ceiling entries/s     {ceiling:>12,.0f}  (CRC32C + SHA-256, no I/O)")
    print(f"durable / ceiling     {durable / ceiling:>12.2f}")
    worst = stats.max_commit_latency_ms
    print(f"commits               {stats.commits:>12,d}  (max latency {worst:.2f} ms)")
    print(f"verify                {verify_mb_s:>12,.1f}  MB/s ({verified:,d} entries)")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps(
                {
                    "durable_entries_s": durable,
                    "durable_single_append_entries_s": single,
                    "burst": args.burst,
                    "ceiling_entries_s": ceiling,
                    "verify_mb_s": verify_mb_s,
                    "max_commit_latency_ms": stats.max_commit_latency_ms,
                    "commits": stats.commits,
                    "entries": args.entries,
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
