"""`vigil log`: verify, show, export and trace the logger's sealed store."""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import msgspec

from vigil.errors import VigilError
from vigil.nodes.logger._audit import AUDIT_EVENT, AuditRecordError, unpack_audit
from vigil.nodes.logger.store import (
    CheckpointError,
    Entry,
    ExternalCheckpoint,
    FaultClass,
    LogKeyError,
    Verifier,
    checkpoint_path,
    export_watermark_path,
    generate_key,
    load_verifier,
    parse_note,
    read_entries,
    verify_store,
)
from vigil.schemas import AuditClass, RequestEvidence, audit_class, schema_id
from vigil.tools._options import json_option, log_key_option

__all__ = ["log"]

_REQUEST_EVENT = schema_id(RequestEvidence)
_EVIDENCE = msgspec.msgpack.Decoder(RequestEvidence)
# A request's stages as `vigil log trace` names them, with the step that leads to each.
_STAGES = (
    ("received", "", "received_ns"),
    ("admitted", "admission", "admitted_us"),
    ("dispatched", "ingest queue", "dispatched_us"),
    ("worker read", "to the worker's loop", "worker_read_us"),
    ("batch start", "its queue", "batch_start_us"),
    ("batch end", "batch", "batch_end_us"),
    ("replied", "reply", "replied_us"),
)

_VERIFY_HELP = f"""Verify every seal, chain link, sequence number, timestamp and commit record of a
store; with --key, the signed checkpoints too.

\b
The verdict says what the store is: clean (closed cleanly), open (not closed cleanly,
nothing torn: a running or crashed logger), torn (not closed cleanly; bytes after the
last durable entry were torn by the crash and left out), damaged, or unreadable.

\b
Exit code: 0 when the store is intact and stamped by the PTP clock, else the OR of:
  {int(FaultClass.UNREADABLE):>3}  UNREADABLE  not a store (empty, short, foreign), or no usable
                    superblock and metadata
  {int(FaultClass.DIGEST):>3}  DIGEST      a CRC32C, SHA-256, header, metadata or commit record
                    seal fails
  {int(FaultClass.CHAIN):>3}  CHAIN       an entry does not link to its predecessor
                    (insertion, reordering, duplication)
  {int(FaultClass.GAP):>3}  GAP         entries are missing (deleted, cut off, a group dropped)
  {int(FaultClass.TIME):>3}  TIME        a timestamp goes backwards
  {int(FaultClass.SIGNATURE):>3}  SIGNATURE   a checkpoint is unsigned, signed by another key, or
                    the entries differ from what was signed (rewritten, re-sealed)
and, for time quality rather than integrity:
  {int(FaultClass.CLOCK):>3}  CLOCK       intact, but entries were stamped by a fallback clock the
                    store recorded, not the PHC (0 with --allow-fallback-clock)
2 is a usage error.

\b
--checkpoint defaults to PATH.checkpoint, the copy of the newest checkpoint the logger
keeps beside the store; a newer one kept elsewhere (a recorder of the log/checkpoint
topic) also tells a copy that was cut short or rolled back.
"""


@click.group("log")
def log() -> None:
    """Read the logger's sealed store: verify it, show, export and trace its entries."""


@log.command("verify", help=_VERIFY_HELP)
@click.argument("path", type=click.Path(dir_okay=False))
@log_key_option
@click.option(
    "--checkpoint",
    "checkpoint_path",
    type=click.Path(dir_okay=False),
    help="A checkpoint note kept outside the store (default: PATH.checkpoint, if present).",
)
@click.option("--allow-fallback-clock", is_flag=True, help="Do not count fallback-clock entries.")
@json_option
def verify_cmd(
    *,
    path: str,
    key_path: str | None,
    checkpoint_path: str | None,
    allow_fallback_clock: bool,
    as_json: bool,
) -> None:
    key = _key(key_path)
    checkpoint, checkpoint_note = _external_checkpoint(path, checkpoint_path)
    report = verify_store(
        path, allow_fallback_clock=allow_fallback_clock, key=key, checkpoint=checkpoint
    )
    if checkpoint_note:
        report.notes.append(checkpoint_note)
    if as_json:
        click.echo(msgspec.json.encode(report).decode())
        sys.exit(report.exit_code)
    span = f"{report.first_seq}..{report.last_seq}" if report.entries else "none"
    click.echo(f"{path}: {report.entries} entries (seq {span}), {report.verdict}")
    if report.durable_seq is not None:
        click.echo(
            f"  durable to seq {report.durable_seq}; history from seq {report.history_start}"
        )
    click.echo(f"  integrity   {'intact' if report.ok else 'FAULTS'}")
    if report.time_quality:
        click.echo(f"  time        {report.time_quality}")
    signed = report.signatures
    if report.key_id and report.key_id not in signed:
        signed += f", signed by key {report.key_id}"
    click.echo(f"  signatures  {signed}")
    if checkpoint is not None:
        click.echo(f"  checkpoint  {checkpoint.source}: seq {checkpoint.checkpoint.size}")
    for fault in report.faults:
        if fault.fault != FaultClass.CLOCK.name:  # time quality: on its own line above
            click.echo(f"  {fault.fault:<10}  {fault.where}: {fault.detail}")
    for note in report.notes:
        click.echo(f"  note        {note}")
    if report.exit_code == 0:
        click.echo("OK")
    elif report.exit_code == FaultClass.CLOCK:
        click.echo(f"OK, sealed with a fallback clock (exit {report.exit_code})")
    else:
        click.echo(f"FAULTS (exit {report.exit_code})")
    sys.exit(report.exit_code)


def _key(path: str | None) -> Verifier | None:
    if path is None:
        return None
    try:
        return load_verifier(path)
    except LogKeyError as exc:
        raise click.BadParameter(str(exc), param_hint="--key") from exc


def _external_checkpoint(store: str, given: str | None) -> tuple[ExternalCheckpoint | None, str]:
    """The checkpoint to hold the store to, and a note when the default one is unusable."""
    path = given if given is not None else str(checkpoint_path(store))
    try:
        raw = Path(path).read_bytes()
        checkpoint, signatures = parse_note(raw)
    except FileNotFoundError:
        if given is not None:
            raise click.BadParameter(f"{path} does not exist", param_hint="--checkpoint") from None
        return None, ""
    except (OSError, CheckpointError) as exc:
        if given is not None:
            raise click.BadParameter(f"{path}: {exc}", param_hint="--checkpoint") from exc
        # The sidecar is not fsynced: a power cut may leave it empty or torn.
        return None, f"{path} is not a usable checkpoint ({exc}); verified without it"
    return ExternalCheckpoint(checkpoint=checkpoint, signatures=signatures, source=path), ""


@log.command("keygen")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Key folder.")
@click.option("--name", default="log", show_default=True, help="Writes NAME.key and NAME.pub.")
@click.option("--force", is_flag=True, help="Replace an existing key pair of that name.")
def keygen_cmd(*, out: str, name: str, force: bool) -> None:
    """Make the Ed25519 key pair that signs the logger's checkpoints.

    NAME.key (PEM, mode 0600) goes in the logger's `store.signing_key`; NAME.pub is what
    `vigil log verify --key` takes.
    """
    folder = Path(out)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    if private.exists() or public.exists():
        if not force:
            raise click.ClickException(f"{private} exists; use --force to replace it")
        private.unlink(missing_ok=True)
    signer = generate_key(private, public)
    click.echo(f"private: {private}\npublic:  {public}\nkey id:  {signer.key_id.hex()}")


def _time_ns(value: str | None) -> int | None:
    """An integer of nanoseconds, or an ISO 8601 time (UTC when it carries no zone)."""
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is neither nanoseconds nor ISO 8601") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _trace(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise click.BadParameter("a trace id is 32 hex digits") from exc
    if len(raw) != 16:
        raise click.BadParameter("a trace id is 32 hex digits")
    return raw


def _entries(
    path: str,
    *,
    since: int | None = None,
    until: int | None = None,
    node: tuple[str, ...] = (),
    event: tuple[str, ...] = (),
    trace: bytes | None = None,
) -> Iterator[Entry]:
    try:
        for entry in read_entries(path):
            if since is not None and entry.timestamp_ns < since:
                continue
            if until is not None and entry.timestamp_ns > until:
                continue
            if node and entry.node not in node:
                continue
            if event and entry.event not in event:
                continue
            if trace is not None and entry.trace_id != trace:
                continue
            yield entry
    except (VigilError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


def _payload(entry: Entry) -> Any:
    try:
        return msgspec.msgpack.decode(entry.payload)
    except msgspec.DecodeError:
        return {"undecodable_payload_hex": entry.payload.hex()}


def _stamp(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    when = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{when}.{rest:09d}"


@log.command("show")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--request",
    "requests",
    is_flag=True,
    help="Only the evidence of requests, one line each: outcome, code, stream, model, time.",
)
@click.option("--since", help="Earliest timestamp: nanoseconds or ISO 8601.")
@click.option("--until", help="Latest timestamp: nanoseconds or ISO 8601.")
@click.option("--node", multiple=True, help="Only entries of this node (repeatable).")
@click.option("--event", multiple=True, help="Only entries of this event (repeatable).")
@click.option("--trace", help="Only entries of this trace id (32 hex digits).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
def show_cmd(
    *,
    path: str,
    since: str | None,
    until: str | None,
    node: tuple[str, ...],
    event: tuple[str, ...],
    trace: str | None,
    limit: int | None,
    requests: bool,
) -> None:
    """Print entries, oldest first, filtered by time, node, event and trace."""
    selected = _entries(
        path, since=_time_ns(since), until=_time_ns(until), node=node,
        event=(_REQUEST_EVENT,) if requests else event, trace=_trace(trace),
    )  # fmt: skip
    if requests:
        for count, entry in enumerate(selected, 1):
            click.echo(_request_line(entry))
            if limit is not None and count >= limit:
                break
        return
    for count, entry in enumerate(selected, 1):
        body = msgspec.json.encode(_payload(entry)).decode()
        trace_hex = entry.trace_id.hex() or "-"
        click.echo(
            f"{entry.seq:>8} {_stamp(entry.timestamp_ns)} {entry.clock_source.name:<8} "
            f"{entry.node:<12} {entry.event:<16} {trace_hex} {body}"
        )
        if limit is not None and count >= limit:
            break


@log.command("export")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default -).")
@click.option(
    "--mark",
    is_flag=True,
    help="After the export is on disk, record its last sequence number so that a store with "
    "retention 'exported' may overwrite what it preserved.",
)
def export_cmd(*, path: str, output: str | None, mark: bool) -> None:
    """Write every entry as one JSON object per line (payload decoded from MessagePack)."""
    encoder = msgspec.json.Encoder()
    last = 0
    if output is None or output == "-":
        if mark:
            raise click.UsageError("--mark needs --output: stdout is not known to be durable")
        for entry in _entries(path):
            sys.stdout.write(encoder.encode(_export_record(entry)).decode() + "\n")
        return
    try:
        with open(output, "wb") as out:
            for entry in _entries(path):
                out.write(encoder.encode(_export_record(entry)) + b"\n")
                last = entry.seq
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        # Nothing is marked: the store keeps every entry until an export is on disk.
        raise click.ClickException(f"export to {output} failed, nothing marked: {exc}") from exc
    if mark and last:
        _mark(path, last)
    click.echo(f"exported up to seq {last} to {output}", err=True)


def _mark(path: str, last: int) -> None:
    # Write-then-rename, so the store never reads a half-written watermark.
    target = export_watermark_path(path)
    scratch = Path(str(target) + ".tmp")
    try:
        with open(scratch, "w") as fh:
            fh.write(f"{last}\n")
            fh.flush()
            os.fsync(fh.fileno())
        scratch.replace(target)
    except OSError as exc:
        scratch.unlink(missing_ok=True)
        raise click.ClickException(
            f"the export is on disk but marking it in {target} failed: {exc}; "
            "the store still keeps every entry"
        ) from exc


def _export_record(entry: Entry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "timestamp_ns": entry.timestamp_ns,
        "clock_source": entry.clock_source.name,
        "node": entry.node,
        "event": entry.event,
        "trace_id": entry.trace_id.hex(),
        "payload": _payload(entry),
        "chain": entry.chain.hex(),
    }


def _evidence(entry: Entry) -> RequestEvidence:
    try:
        return _EVIDENCE.decode(entry.payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise click.ClickException(f"entry {entry.seq}: not a request's evidence: {exc}") from exc


def _ms(micros: int | None) -> str:
    return "-" if micros is None else f"{micros / 1000:.3f}"


def _request_line(entry: Entry) -> str:
    """One request's evidence in one line (`vigil log show --request`)."""
    r = _evidence(entry)
    model = f"{r.model} {r.version}".strip() or "-"
    return (
        f"{entry.seq:>8} {_stamp(r.received_ns)} {entry.trace_id.hex() or '-'} "
        f"{r.outcome:<7} {r.code:<18} {r.stream_id or '-':<16} {model:<16} "
        f"{_ms(r.replied_us):>10} ms  {r.peer or '-'}"
    )


def _path_lines(entry: Entry) -> list[str]:
    """A request's path: each stage it reached, when, and how long the step to it took."""
    r = _evidence(entry)
    model = f"{r.model} {r.version}".strip() or "no model"
    lines = [
        f"request {r.outcome} ({r.code}{', ' + r.diag_code if r.diag_code else ''}): "
        f"stream {r.stream_id or '-'} frame {r.frame_ts_us}, peer {r.peer or '-'}"
        f"{', tenant ' + r.tenant if r.tenant else ''}, {model}"
        + (f", {r.worker} batch {r.batch_id} ({r.batch_size} requests)" if r.worker else "")
        + (f", {r.attempts} dispatches" if r.attempts > 1 else ""),
        f"  received at {_stamp(r.received_ns)} (ingest clock)",
        f"  {'stage':<12} {'at ms':>10} {'step ms':>10}  step",
    ]
    previous = 0
    for name, step, field in _STAGES:
        at = 0 if field == "received_ns" else getattr(r, field)
        if at is None:
            continue
        # Evidence sealed before the worker's read stamp: the batch start's step holds both.
        joined = field == "batch_start_us" and r.worker_read_us is None
        label = "to the worker, its queue" if joined else step
        lines.append(
            f"  {name:<12} {at / 1000:>10.3f} {(at - previous) / 1000:>10.3f}  {label}".rstrip()
        )
        previous = at
    lines.append(f"  reply sha256 {r.digest.hex() or '-'}")
    return lines


@log.command("trace")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("trace_id")
def trace_cmd(*, path: str, trace_id: str) -> None:
    """Follow one request across nodes: its path through the pipeline stage by stage (from its
    sealed evidence), then every entry of TRACE_ID in time order, with timings."""
    entries = sorted(_entries(path, trace=_trace(trace_id)), key=lambda e: (e.timestamp_ns, e.seq))
    if not entries:
        raise click.ClickException(f"no entry carries trace {trace_id}")
    for entry in entries:
        if entry.event == _REQUEST_EVENT:
            for line in _path_lines(entry):
                click.echo(line)
    start = previous = entries[0].timestamp_ns
    click.echo(f"trace {trace_id}: {len(entries)} entries")
    for entry in entries:
        since_start = (entry.timestamp_ns - start) / 1e6
        step = (entry.timestamp_ns - previous) / 1e6
        previous = entry.timestamp_ns
        click.echo(
            f"  +{since_start:10.3f} ms  (+{step:8.3f})  {entry.node:<12} {entry.event:<16} "
            f"seq {entry.seq}"
        )
    click.echo(f"total {(entries[-1].timestamp_ns - start) / 1e6:.3f} ms")


class AuditRow(msgspec.Struct, frozen=True, kw_only=True):
    """One binary audit record as `vigil log audit` shows it, with the entry that seals it."""

    seq: int
    timestamp_ns: int
    event_class: str
    event_id: int
    event: str
    instance_id: int
    node: str
    payload: str


def _audit_row(entry: Entry) -> AuditRow:
    try:
        raw = msgspec.msgpack.decode(entry.payload)
        if not isinstance(raw, bytes):
            raise AuditRecordError(f"payload is {type(raw).__name__}, not bin")
        record = unpack_audit(raw)
    except (msgspec.DecodeError, AuditRecordError) as exc:
        raise click.ClickException(f"entry {entry.seq}: not an audit record: {exc}") from exc
    return AuditRow(
        seq=entry.seq,
        timestamp_ns=record.timestamp_ns,
        event_class=audit_class(record.event).name,
        event_id=int(record.event),
        event=record.event.name,
        instance_id=record.instance,
        node=entry.node,
        payload=record.payload.rstrip(b"\0").decode("utf-8", "replace"),
    )


@log.command("audit")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--class",
    "classes",
    multiple=True,
    type=click.Choice([c.name for c in AuditClass], case_sensitive=False),
    help="Only records of this event class (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def audit_cmd(*, path: str, classes: tuple[str, ...], as_json: bool) -> None:
    """Print the binary audit records of a store as a table: time, event class and id,
    software-instance id, node and the record's 32-byte payload (docs/audit.md)."""
    wanted = {c.upper() for c in classes}
    rows = [
        row
        for row in map(_audit_row, _entries(path, event=(AUDIT_EVENT,)))
        if not wanted or row.event_class in wanted
    ]
    if as_json:
        encoder = msgspec.json.Encoder()
        for row in rows:
            click.echo(encoder.encode(row).decode())
        return
    click.echo(
        f"{'seq':>8} {'time (UTC)':<29} {'class':<20} {'id':>5} {'event':<18} "
        f"{'instance':>8} {'node':<12} payload"
    )
    for row in rows:
        click.echo(
            f"{row.seq:>8} {_stamp(row.timestamp_ns):<29} {row.event_class:<20} "
            f"{row.event_id:>5} {row.event:<18} {row.instance_id:>8} {row.node:<12} {row.payload}"
        )
