"""`vigil schema export`: JSON Schema for every message type, for non-Python peers."""

from __future__ import annotations

import json
from pathlib import Path

import click
import msgspec

from vigil.bus.envelope import Envelope
from vigil.schemas import SCHEMAS, TOPICS, schema_id

__all__ = ["export_schemas", "schema"]


def export_schemas(out: Path) -> list[Path]:
    """Write one JSON Schema per message type, the envelope and the topic catalogue."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sid, cls in sorted(SCHEMAS.items()):
        path = out / f"{sid}.schema.json"
        path.write_text(json.dumps(msgspec.json.schema(cls), indent=2))
        written.append(path)
    envelope = out / "envelope.schema.json"
    envelope.write_text(json.dumps(msgspec.json.schema(Envelope), indent=2))
    catalogue = out / "topics.json"
    catalogue.write_text(
        json.dumps({topic: schema_id(cls) for topic, cls in TOPICS.items()}, indent=2)
    )
    return [*written, envelope, catalogue]


@click.group("schema")
def schema() -> None:
    """Message schemas."""


@schema.command("export")
@click.option("--out", default="schemas-json", show_default=True, type=click.Path(file_okay=False))
def export(out: str) -> None:
    """Write JSON Schema for every message type to OUT."""
    for path in export_schemas(Path(out)):
        click.echo(str(path))
