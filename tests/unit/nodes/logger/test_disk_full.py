"""A full disk and bad input: typed errors and verdicts, nothing left behind, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.nodes.logger import _snapshot
from vigil.nodes.logger._verify import FaultClass, verify_image
from vigil.nodes.logger.store import (
    LogStore,
    StoreConfig,
    StoreLayoutError,
    StoreNoSpace,
    export_watermark_path,
    read_entries,
    verify_store,
)
from vigil.testing import logtamper
from vigil.testing.crashsim import RecordingMedium, SimClock, SimMonotonic
from vigil.tools.log_cmd import log

pytestmark = pytest.mark.verifies("SR-LOG-002")


def test_a_store_larger_than_the_free_space_is_refused_up_front(store_path: str) -> None:
    """Creating a store the file system cannot hold raises StoreNoSpace naming the path, the
    size and the free space, and leaves no file behind."""
    huge = 1 << 60
    config = StoreConfig(path=store_path, size_bytes=huge, group_bytes=4 << 20)
    with pytest.raises(StoreNoSpace) as refused:
        LogStore.open(config, clock=SimClock())
    assert (refused.value.path, refused.value.size) == (store_path, huge)
    assert refused.value.free < huge
    assert store_path in str(refused.value) and str(huge) in str(refused.value)
    assert not Path(store_path).exists()


def test_a_reservation_the_kernel_refuses_leaves_nothing_behind(store_path: str) -> None:
    """When the space check passes but the kernel refuses the reservation (here a file size
    limit, EFBIG), creation raises StoreNoSpace and removes the file it created."""
    script = f"""
import resource, signal
from vigil.nodes.logger.store import LogStore, StoreConfig, StoreNoSpace
from vigil.testing.crashsim import SimClock
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (32768, 32768))
try:
    LogStore.open(StoreConfig(path={store_path!r}, size_bytes=1 << 20, group_bytes=65536),
                  clock=SimClock())
except StoreNoSpace as exc:
    print("refused", exc.size)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.split() == ["refused", str(1 << 20)], done.stderr
    assert not Path(store_path).exists()


def test_a_partial_file_is_not_adopted_as_a_smaller_store(store_path: str) -> None:
    """A file that holds no store and is not the configured size (a creation cut short by an
    older release, or someone else's file) is refused, never re-created smaller."""
    Path(store_path).write_bytes(bytes(40 * 1024))
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with pytest.raises(StoreLayoutError, match="not the configured"):
        LogStore.open(config, clock=SimClock())
    assert os.path.getsize(store_path) == 40 * 1024


@pytest.mark.parametrize(
    "content",
    [b"", b"VIGILLOG", b"\x89PNG\r\n\x1a\n" + bytes(70000), None],
    ids=["empty", "truncated", "foreign", "directory"],
)
def test_verify_gives_a_typed_verdict_for_what_is_not_a_store(
    tmp_path: Path, content: bytes | None
) -> None:
    """An empty, truncated or foreign file, or a directory, is an UNREADABLE verdict from
    `verify_store`; `vigil log verify` exits 1 for the files (2, a usage error, for a
    directory), never with a traceback."""
    path = tmp_path / "store.vlog"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    report = verify_store(path)
    assert (report.verdict, report.exit_code) == ("unreadable", FaultClass.UNREADABLE)
    result = CliRunner().invoke(log, ["verify", str(path)])
    assert isinstance(result.exception, SystemExit), result.exception
    if content is None:
        assert result.exit_code == 2 and "is a directory" in result.output
    else:
        assert result.exit_code == 1 and "unreadable" in result.output


def test_a_truncated_copy_of_a_store_is_unreadable(small_config: StoreConfig) -> None:
    """A store file cut short (half its bytes) verifies UNREADABLE, naming the sizes."""
    with LogStore.open(small_config, clock=SimClock()) as store:
        store.append(node="n", event="e", payload=b"\xc0")
    raw = Path(small_config.path).read_bytes()
    Path(small_config.path).write_bytes(raw[: len(raw) // 2])
    report = verify_store(small_config.path)
    assert report.verdict == "unreadable"
    assert "the superblock says" in report.faults[0].detail


def test_export_mark_on_a_full_disk_is_a_typed_error(store_path: str, tmp_path: Path) -> None:
    """`vigil log export --mark` into a file the disk cannot take fails with a message and
    exit 1, and marks nothing: the store keeps every entry."""
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock()) as store:
        store.append(node="n", event="e", payload=b"\xc0")
    full = tmp_path / "export.jsonl"
    full.symlink_to("/dev/full")
    result = CliRunner().invoke(log, ["export", store_path, "-o", str(full), "--mark"])
    assert result.exit_code == 1
    assert "nothing marked" in result.output and "No space left" in result.output
    assert not export_watermark_path(store_path).exists()


def test_a_checkpoint_copy_the_disk_refuses_does_not_stop_the_store(store_path: str) -> None:
    """When the sidecar checkpoint file cannot be written (disk full), the store counts it and
    goes on committing; its commit records still hold every checkpoint."""
    sidecar = Path(store_path + ".checkpoint.tmp")
    sidecar.symlink_to("/dev/full")
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock()) as store:
        seq = store.append(node="n", event="e", payload=b"\xc0")
        store.commit()
        assert store.stats.committed_seq == seq
        assert store.stats.checkpoint_errors >= 1
        assert "No space left" in store.stats.checkpoint_error
    assert verify_store(store_path).ok


def test_verify_of_a_live_store_reads_a_consistent_snapshot(tmp_path: Path) -> None:
    """While a logger process appends and reclaims groups as fast as it can, verify of the
    same file never reports a fault: it reads a snapshot whose metadata did not change under
    it."""
    path = str(tmp_path / "live.vlog")
    writer = f"""
from vigil.nodes.logger.store import LogStore, StoreConfig
config = StoreConfig(path={path!r}, size_bytes=256 * 1024, group_bytes=16384)
with LogStore.open(config) as store:
    store.append_many([("w", "diag.event", bytes(200), b"")] * 2000)  # wrapped already
    print("ready", flush=True)
    while True:
        store.append_many([("w", "diag.event", bytes(200), b"")] * 50)
"""
    with subprocess.Popen(
        [sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            reports = [verify_store(path, allow_fallback_clock=True) for _ in range(30)]
        finally:
            proc.kill()
    assert [r.faults for r in reports if not r.ok] == []
    assert {r.verdict for r in reports} <= {"open", "torn"}


def test_verify_in_place_notices_a_reclaim_right_after_it_decoded_the_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group reclaimed between verify decoding the metadata in place and anything later
    is noticed (verify then reads a copy): the metadata it compares against at the end is
    what it decoded, not a later version."""
    path = str(tmp_path / "live.vlog")
    config = StoreConfig(path=path, size_bytes=256 * 1024, group_bytes=16384)
    real_open_view = _snapshot.open_view
    with LogStore.open(config) as store:
        store.append_many([("w", "diag.event", bytes(200), b"")] * 2000)  # wrapped already
        store.commit()

        def open_then_reclaim(image: object, page_hint: int = 4096) -> object:
            view = real_open_view(image, page_hint)  # type: ignore[arg-type]
            opened = store.stats.groups_opened
            while store.stats.groups_opened == opened:
                store.append_many([("w", "diag.event", bytes(200), b"")] * 50)
            store.commit()
            monkeypatch.setattr(_snapshot, "open_view", real_open_view)  # once
            return view

        monkeypatch.setattr(_snapshot, "open_view", open_then_reclaim)
        report = verify_store(path, allow_fallback_clock=True)
    assert report.faults == []
    assert report.ok


def test_damage_in_an_older_group_is_one_fault_of_its_own_class() -> None:
    """A damaged entry in an older group is reported once, as DIGEST with its range; the walk
    goes on after it, so it is not also reported as a gap or a broken chain."""
    medium = RecordingMedium(bytes(64 * 1024))
    config = StoreConfig(
        path="sim", size_bytes=64 * 1024, group_bytes=4096, background_commit=False
    )
    with LogStore.open(config, clock=SimClock(), medium=medium, monotonic_ns=SimMonotonic()) as s:
        for i in range(80):
            s.append(node="n", event="diag.event", payload=bytes([i]) * 100)
    spans = logtamper.entry_spans(medium.image)
    seq, start, _end = spans[3]
    medium.image[start + 112 + 15] ^= 0x40  # a payload byte: its CRC32C fails
    report = verify_image(medium.image)
    assert report.exit_code == FaultClass.DIGEST
    assert [(f.fault, f.seq) for f in report.faults] == [("DIGEST", seq)]
    assert report.entries == len(spans) - 1
    assert sum(1 for e in read_entries_from(medium.image) if e == seq) == 0


def read_entries_from(image: bytearray) -> list[int]:
    """The sequence numbers verify accepts."""
    seqs: list[int] = []
    verify_image(image, on_entry=lambda e: seqs.append(e.seq))
    return seqs


def test_read_entries_follows_verify(small_config: StoreConfig) -> None:
    """`read_entries` yields exactly what verify accepts."""
    with LogStore.open(small_config, clock=SimClock()) as store:
        for _ in range(30):
            store.append(node="n", event="e", payload=bytes(100))
    assert [e.seq for e in read_entries(small_config.path)] == read_entries_from(
        bytearray(Path(small_config.path).read_bytes())
    )
