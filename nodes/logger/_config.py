"""The log store's typed configuration and the counters of an open store."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["StoreConfig", "StoreStats"]


class StoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the store lives, its geometry, its commit latency and its clock."""

    path: str
    size_bytes: int = 64 * 1024 * 1024
    # Opening a group waits for one msync: larger groups wait less often (docs/log-store.md).
    group_bytes: int = 4 * 1024 * 1024
    commit_latency_ms: float = 5.0
    ptp_device: str = "/dev/ptp0"
    fallback: tuple[Literal["TAI", "REALTIME"], ...] = ("TAI", "REALTIME")
    # "overwrite": the oldest group is reclaimed when no free group is left. "exported": it is
    # reclaimed only once `vigil log export --mark` has preserved it, else append raises
    # StoreFull.
    retention: Literal["overwrite", "exported"] = "overwrite"
    # msync from a committer thread (overlapping with sealing) or inline in `commit`.
    background_commit: bool = True
    # The Ed25519 private key (PEM) that signs every commit record's checkpoint; without one
    # the store writes unsigned commit records. `vigil log keygen` makes one.
    signing_key: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.commit_latency_ms <= 60_000:
            raise ValueError("commit_latency_ms must be in (0, 60000]")
        if self.size_bytes <= 0 or self.group_bytes <= 0:
            raise ValueError("size_bytes and group_bytes must be positive")


class StoreStats(msgspec.Struct, kw_only=True):
    """Counters of one open store (this session only, except the sequence numbers)."""

    entries: int = 0
    last_seq: int = 0
    committed_seq: int = 0
    oldest_seq: int = 0
    # Where history starts by the newest durable commit record (moves before a reclaim does).
    history_start: int = 0
    commits: int = 0
    last_commit_latency_ms: float = 0.0
    max_commit_latency_ms: float = 0.0
    bytes_appended: int = 0
    groups_opened: int = 0
    bad_groups: int = 0
    recovered: bool = False
    clock_source: str = ""
    # Which sealing loop serves: "compiled" (the C extension) or "python" (the reference).
    sealer: str = ""
    # Checkpoints: how many were signed and the time spent signing them; the signed-note key
    # hash (hex, empty when unsigned); copies outside the ring that could not be written.
    signatures: int = 0
    sign_ns: int = 0
    key_id: str = ""
    checkpoint_errors: int = 0
    checkpoint_error: str = ""
