"""Benchmark the sealed log store: durable entries/s beside the sealing ceiling, and verify MB/s.

Prints, from one run on one machine:

* durable entries/s: 256-byte payloads appended through `LogStore` with group commit, counted
  once the final commit has returned (every entry msynced), in bursts as the logger appends
  them (`append_many`), with every commit record signed (an Ed25519 checkpoint per commit
  group, as the logger runs); beside it the same without a signing key, one `append` per
  entry, and the same bursts through the Python reference sealing loop;
* the signing cost: signatures made, microseconds each, and their share of the run;
* the compute ceiling: the store's sealing loop (CRC32C, SHA-256 of timestamp || payload, the
  chain SHA-256 and the header) over the same entries with no I/O at all, and beside it
  CRC32C + one SHA-256 per entry through Python's hashlib;
* verify throughput in MB/s of store file walked.

`--json PATH` writes `durable_entries_s` (signed), `durable_unsigned_entries_s`, `sign_us`,
`ceiling_entries_s` and `verify_mb_s` (and the figures beside them). The benchmark reports; it
never asserts a timing.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import crc32c
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil.nodes.logger._sealer import SEALER, SealFn, seal, seal_python
from vigil.nodes.logger.store import LogStore, Signer, StoreConfig, verify_store

PAYLOAD_BYTES = 256
TRACE = bytes(range(16))


def _payloads(count: int) -> list[bytes]:
    # Distinct payloads, so no layer can profit from repetition.
    seed = os.urandom(PAYLOAD_BYTES)
    return [i.to_bytes(8, "little") + seed[8:] for i in range(count)]


def measure_ceiling(payloads: list[bytes], burst: int) -> float:
    """Entries/s of the store's sealing loop alone: every seal of every entry, into memory."""
    names = {("bench", "diag.event"): (5, 10, b"benchdiag.event")}
    records = [("bench", "diag.event", payload, TRACE) for payload in payloads]
    now = functools.partial(time.clock_gettime_ns, time.CLOCK_TAI)
    seq, chain = 0, bytes(32)
    out = memoryview(bytearray(burst * 512))
    began = time.perf_counter()
    for at in range(0, len(records), burst):
        chunk = records[at : at + burst]
        _, _, seq, chain = seal(chunk, 0, len(chunk), names, now, crc32c.crc32c, 2, seq, chain, out)
    return len(payloads) / (time.perf_counter() - began)


def measure_hashlib(payloads: list[bytes]) -> float:
    """Entries/s for CRC32C + SHA-256(timestamp || payload) alone, through Python's hashlib."""
    sha = hashlib.sha256
    crc = crc32c.crc32c
    now = time.clock_gettime_ns
    began = time.perf_counter()
    for payload in payloads:
        crc(payload)
        sha(now(time.CLOCK_TAI).to_bytes(8, "little") + payload).digest()
    return len(payloads) / (time.perf_counter() - began)


def measure_durable(
    path: str,
    payloads: list[bytes],
    latency_ms: float,
    group_bytes: int,
    burst: int,
    *,
    sealer: SealFn = seal,
    signer: Signer | None = None,
) -> tuple[float, LogStore]:
    """Entries/s appended and made durable through the store's group commit; `burst` records
    per `append_many` call, or one `append` call per entry when it is 1; `signer` signs each
    commit record's checkpoint."""
    size = max(64 << 20, len(payloads) * 448 * 2)
    config = StoreConfig(
        path=path, size_bytes=size, group_bytes=group_bytes, commit_latency_ms=latency_ms
    )
    records = [("bench", "diag.event", payload, TRACE) for payload in payloads]
    with LogStore.open(config, sealer=sealer, signer=signer) as store:
        append, append_many = store.append, store.append_many
        began = time.perf_counter()
        if burst == 1:
            for payload in payloads:
                append(node="bench", event="diag.event", payload=payload, trace_id=TRACE)
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
    burst = max(1, args.burst)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = str(Path(tmp) / "bench.vlog")
        ceiling = measure_ceiling(payloads, burst)
        hashlib_only = measure_hashlib(payloads)

        signer = Signer(Ed25519PrivateKey.generate())

        def durable_run(
            name: str, per_call: int, sealer: SealFn = seal, *, signed: bool = True
        ) -> tuple[float, LogStore]:
            where = str(Path(tmp) / name)
            return measure_durable(
                where, payloads, args.latency_ms, args.group_bytes, per_call, sealer=sealer,
                signer=signer if signed else None,
            )  # fmt: skip

        single, _ = durable_run("single.vlog", 1)
        reference, _ = durable_run("reference.vlog", burst, seal_python)
        unsigned, _ = durable_run("unsigned.vlog", burst, signed=False)
        durable, store = durable_run("bench.vlog", burst)
        verify_mb_s, verified = measure_verify(path)
    stats = store.stats
    sign_us = stats.sign_ns / stats.signatures / 1e3 if stats.signatures else 0.0
    sign_share = stats.sign_ns / 1e9 / (args.entries / durable)
    print(f"entries               {args.entries:>12,d}  ({PAYLOAD_BYTES}-byte payloads)")
    commit = f"group commit {args.latency_ms} ms, {args.group_bytes >> 10} KiB groups"
    print(f"durable entries/s     {durable:>12,.0f}  ({SEALER} sealing loop, bursts of {burst},")
    print(f"                      {'':>12}   {commit}, signed checkpoints)")
    print(f"  no signing key      {unsigned:>12,.0f}  (unsigned commit records)")
    print(f"  one append per call {single:>12,.0f}")
    print(f"  Python reference    {reference:>12,.0f}  (the same bursts, sealed in Python)")
    print(f"ceiling entries/s     {ceiling:>12,.0f}  (the sealing loop alone, no I/O)")
    print(f"  hashlib             {hashlib_only:>12,.0f}  (CRC32C + one SHA-256 per entry, no I/O)")
    print(f"durable / ceiling     {durable / ceiling:>12.2f}")
    print(f"durable / reference   {durable / reference:>12.2f}")
    worst = stats.max_commit_latency_ms
    print(f"commits               {stats.commits:>12,d}  (max latency {worst:.2f} ms)")
    print(
        f"signatures            {stats.signatures:>12,d}  ({sign_us:.1f} us each, Ed25519; "
        f"{sign_share:.1%} of the run)"
    )
    print(f"verify                {verify_mb_s:>12,.1f}  MB/s ({verified:,d} entries)")
    if args.json_path:
        Path(args.json_path).write_text(
            json.dumps(
                {
                    "durable_entries_s": durable,
                    "durable_unsigned_entries_s": unsigned,
                    "signatures": stats.signatures,
                    "sign_us": sign_us,
                    "sign_share": sign_share,
                    "durable_single_append_entries_s": single,
                    "durable_python_sealer_entries_s": reference,
                    "sealer": SEALER,
                    "burst": burst,
                    "ceiling_entries_s": ceiling,
                    "hashlib_entries_s": hashlib_only,
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
