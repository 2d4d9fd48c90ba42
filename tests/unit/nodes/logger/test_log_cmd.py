"""`vigil log` verify, show, export and trace on real store files."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
from click.testing import CliRunner

from vigil.bus.ptp import ClockSource
from vigil.nodes.logger.store import (
    FaultClass,
    LogStore,
    StoreConfig,
    checkpoint_path,
    export_watermark_path,
)
from vigil.schemas import Outcome, RequestEvidence
from vigil.testing.crashsim import SimClock
from vigil.tools.log_cmd import log

TRACE = bytes(range(16))


def _store(path: str) -> None:
    config = StoreConfig(path=path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock(step_ns=2_000_000)) as store:
        store.append(
            node="ingest",
            event="infer.request",
            payload=msgspec.msgpack.encode({"id": 1}),
            trace_id=TRACE,
        )
        store.append(
            node="worker-0",
            event="infer.result",
            payload=msgspec.msgpack.encode({"ok": True}),
            trace_id=TRACE,
        )
        store.append(node="watchdog", event="diag.event", payload=msgspec.msgpack.encode("x"))


def test_verify_exits_zero_on_an_intact_store(store_path: str) -> None:
    """An intact PHC-stamped store verifies with exit code 0."""
    _store(store_path)
    result = CliRunner().invoke(log, ["verify", store_path])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_verify_exit_code_names_the_fault_class(store_path: str) -> None:
    """A flipped payload bit exits with the DIGEST bit (4) set."""
    _store(store_path)
    raw = bytearray(Path(store_path).read_bytes())
    at = raw.index(msgspec.msgpack.encode({"ok": True}))
    raw[at] ^= 0x10
    Path(store_path).write_bytes(raw)
    result = CliRunner().invoke(log, ["verify", store_path])
    assert result.exit_code & 4


def test_verify_json_is_machine_readable(store_path: str) -> None:
    """--json prints the report as one JSON object."""
    _store(store_path)
    result = CliRunner().invoke(log, ["verify", "--json", store_path])
    assert json.loads(result.output)["entries"] == 4


def test_show_filters_by_node_and_event(store_path: str) -> None:
    """show prints only the entries matching every filter."""
    _store(store_path)
    result = CliRunner().invoke(log, ["show", store_path, "--node", "worker-0"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert len(lines) == 1 and "infer.result" in lines[0]


def test_export_writes_json_lines_and_marks(store_path: str, tmp_path: Path) -> None:
    """export writes one JSON object per entry; --mark records the last exported seq."""
    _store(store_path)
    out = tmp_path / "export.jsonl"
    result = CliRunner().invoke(log, ["export", store_path, "-o", str(out), "--mark"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["node"] for r in records[1:]] == ["ingest", "worker-0", "watchdog"]
    assert records[2]["payload"] == {"ok": True}
    assert export_watermark_path(store_path).read_text().strip() == str(records[-1]["seq"])


def test_trace_follows_one_request_with_timings(store_path: str) -> None:
    """trace lists the request's entries across nodes with the time since the first."""
    _store(store_path)
    result = CliRunner().invoke(log, ["trace", store_path, TRACE.hex()])
    assert result.exit_code == 0, result.output
    assert "2 entries" in result.output
    assert "ingest" in result.output and "worker-0" in result.output
    assert "+     2.000 ms" in result.output


def test_trace_of_an_unknown_id_fails(store_path: str) -> None:
    """A trace id found nowhere is an error, not empty output."""
    _store(store_path)
    result = CliRunner().invoke(log, ["trace", store_path, "ab" * 16])
    assert result.exit_code == 1


SERVED = RequestEvidence(
    outcome=Outcome.SERVED,
    code="OK",
    peer="cam-client",
    stream_id="cam0",
    frame_ts_us=7,
    model="det",
    version="2",
    worker="worker.1",
    batch_id=4,
    batch_size=2,
    attempts=1,
    received_ns=1_700_000_000_000_000_000,
    admitted_us=10,
    dispatched_us=30,
    worker_read_us=70,
    batch_start_us=250,
    batch_end_us=5250,
    replied_us=5400,
    digest=bytes(32),
)
REFUSED = RequestEvidence(
    outcome=Outcome.REFUSED,
    code="RESOURCE_EXHAUSTED",
    diag_code="DIA-5001",
    stream_id="cam0",
    received_ns=1_700_000_000_000_000_000,
    replied_us=40,
)
OTHER = bytes(range(16, 32))


def _evidence_store(path: str) -> None:
    config = StoreConfig(path=path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock(step_ns=2_000_000)) as store:
        for evidence, trace in ((SERVED, TRACE), (REFUSED, OTHER)):
            store.append(
                node="ingest",
                event="evidence.request",
                payload=msgspec.msgpack.encode(evidence),
                trace_id=trace,
            )
        store.append(node="watchdog", event="diag.event", payload=msgspec.msgpack.encode("x"))


def test_trace_prints_each_stage_of_a_served_request_with_its_step(store_path: str) -> None:
    """trace reads the request's evidence: every stage, when, and how long the step took."""
    _evidence_store(store_path)
    result = CliRunner().invoke(log, ["trace", store_path, TRACE.hex()])
    assert result.exit_code == 0, result.output
    assert "request served (OK): stream cam0 frame 7, peer cam-client, det 2" in result.output
    steps = {
        line.split()[0] + (" " + line.split()[1] if line.split()[1].isalpha() else ""): line
        for line in result.output.splitlines()
        if line.startswith("  ") and len(line.split()) > 2
    }
    assert "0.040" in steps["worker read"] and "0.180" in steps["batch start"]
    assert "5.000" in steps["batch end"]
    assert "5.400" in steps["replied"] and "0.150" in steps["replied"]


def test_trace_of_a_refusal_shows_only_the_stages_it_reached(store_path: str) -> None:
    """A refused request was received and answered, nothing in between."""
    _evidence_store(store_path)
    result = CliRunner().invoke(log, ["trace", store_path, OTHER.hex()])
    assert result.exit_code == 0, result.output
    assert "request refused (RESOURCE_EXHAUSTED, DIA-5001)" in result.output
    assert "admitted" not in result.output and "batch" not in result.output


def test_show_request_prints_one_line_per_request(store_path: str) -> None:
    """show --request keeps only the requests' evidence, one line each."""
    _evidence_store(store_path)
    result = CliRunner().invoke(log, ["show", store_path, "--request"])
    assert result.exit_code == 0, result.output
    served, refused = result.output.splitlines()
    assert TRACE.hex() in served and " served " in served and "5.400 ms" in served
    assert OTHER.hex() in refused and "RESOURCE_EXHAUSTED" in refused


def _signed_store(path: str, keys: Path, entries: int = 3) -> str:
    """A store signed with a key made by `vigil log keygen`; returns the public key's path."""
    result = CliRunner().invoke(log, ["keygen", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    config = StoreConfig(
        path=path, size_bytes=64 * 1024, group_bytes=4096, signing_key=str(keys / "log.key")
    )
    with LogStore.open(config, clock=SimClock()) as store:
        for i in range(entries):
            store.append(node="ingest", event="diag.event", payload=bytes([i]))
    assert oct((keys / "log.key").stat().st_mode & 0o777) == "0o600"
    return str(keys / "log.pub")


def test_verify_with_the_key_checks_the_signatures_and_the_sidecar(
    store_path: str, tmp_path: Path
) -> None:
    """With the key made by `vigil log keygen`, verify checks the signed commit record and the
    checkpoint copy beside the store, and says so."""
    public = _signed_store(store_path, tmp_path / "keys")
    assert checkpoint_path(store_path).read_text().startswith("vigil.log/")
    result = CliRunner().invoke(log, ["verify", "--key", public, store_path])
    assert result.exit_code == 0, result.output
    assert "signatures  verified" in result.output
    assert f"checkpoint  {checkpoint_path(store_path)}" in result.output


def test_verify_with_the_key_refuses_a_store_signed_by_another(
    store_path: str, tmp_path: Path
) -> None:
    """A store whose checkpoints another key signed fails with SIGNATURE (128)."""
    _signed_store(store_path, tmp_path / "keys")
    other = CliRunner().invoke(log, ["keygen", "--out", str(tmp_path / "other")])
    assert other.exit_code == 0
    result = CliRunner().invoke(
        log, ["verify", "--key", str(tmp_path / "other" / "log.pub"), store_path]
    )
    assert result.exit_code == FaultClass.SIGNATURE, result.output
    assert "SIGNATURE" in result.output


def test_verify_with_a_newer_checkpoint_finds_a_rolled_back_copy(
    store_path: str, tmp_path: Path
) -> None:
    """An older copy of the store checked against the newest checkpoint is missing the
    entries since: GAP (16), with the missing range."""
    public = _signed_store(store_path, tmp_path / "keys")
    older = tmp_path / "older.vlog"
    older.write_bytes(Path(store_path).read_bytes())
    config = StoreConfig(
        path=store_path, size_bytes=64 * 1024, group_bytes=4096,
        signing_key=str(tmp_path / "keys" / "log.key"),
    )  # fmt: skip
    with LogStore.open(config, clock=SimClock(start_ns=1_800_000_000_000_000_000)) as store:
        last = store.append(node="ingest", event="diag.event", payload=b"\xc0")
    newest = tmp_path / "newest.checkpoint"
    newest.write_bytes(checkpoint_path(store_path).read_bytes())
    result = CliRunner().invoke(
        log, ["verify", "--key", public, "--checkpoint", str(newest), str(older)]
    )
    assert result.exit_code == FaultClass.GAP, result.output
    assert f"..{last} missing" in result.output


def test_a_malformed_checkpoint_file_is_a_usage_error(store_path: str, tmp_path: Path) -> None:
    """--checkpoint naming a file that is not a checkpoint note exits 2 with the reason."""
    _store(store_path)
    bad = tmp_path / "bad.checkpoint"
    bad.write_bytes(b"\xff\xfe")
    result = CliRunner().invoke(log, ["verify", "--checkpoint", str(bad), store_path])
    assert result.exit_code == 2 and "UTF-8" in result.output


def test_a_store_sealed_with_a_recorded_fallback_clock_is_intact(store_path: str) -> None:
    """A store stamped throughout by a fallback clock it recorded is intact: verify says
    integrity and time quality apart, exits 64 (not an integrity fault) and 0 when the
    fallback is allowed."""
    config = StoreConfig(path=store_path, size_bytes=64 * 1024, group_bytes=4096)
    with LogStore.open(config, clock=SimClock(source=ClockSource.TAI)) as store:
        store.append(node="ingest", event="diag.event", payload=b"\xc0")
    result = CliRunner().invoke(log, ["verify", store_path])
    assert result.exit_code == FaultClass.CLOCK, result.output
    assert "integrity   intact" in result.output
    assert "time        fallback clock recorded: 2 entries stamped by CLOCK_TAI" in result.output
    assert "OK, sealed with a fallback clock (exit 64)" in result.output
    allowed = CliRunner().invoke(log, ["verify", "--allow-fallback-clock", store_path])
    assert allowed.exit_code == 0, allowed.output
