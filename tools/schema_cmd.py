"""`vigil schema export`: JSON Schema for every message type, for non-Python peers.

Each file is a JSON Schema 2020-12 document with an `$id`. On the bus the same messages are
MessagePack: a field JSON Schema spells as a base64 string (`contentEncoding: base64`) is a
MessagePack `bin` value there, and carries `x-msgpack: bin` to say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import click
import msgspec

from vigil.bus.envelope import Envelope
from vigil.schemas import SCHEMAS, TOPICS, schema_id

__all__ = ["DIALECT", "ID_BASE", "export_schemas", "json_schema", "schema"]

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ID_BASE: Final = "urn:vigil:schema:"
_BIN_NOTE: Final = (
    "Encoded as MessagePack on the bus: a string with contentEncoding base64 (marked "
    "x-msgpack: bin) is a MessagePack bin value there, and base64 text only in JSON."
)


def _mark_bin(node: Any) -> Any:
    """Mark every bytes schema (a base64 string) with `x-msgpack: bin`, in place."""
    if isinstance(node, dict):
        if node.get("contentEncoding") == "base64":
            node["x-msgpack"] = "bin"
        for value in node.values():
            _mark_bin(value)
    elif isinstance(node, list):
        for value in node:
            _mark_bin(value)
    return node


def json_schema(cls: type[msgspec.Struct], name: str, id_base: str = ID_BASE) -> dict[str, Any]:
    """The JSON Schema 2020-12 document of one message type, with `$id` `<id_base><name>`."""
    body = _mark_bin(msgspec.json.schema(cls, ref_template="#/$defs/{name}"))
    return {"$schema": DIALECT, "$id": f"{id_base}{name}", "$comment": _BIN_NOTE, **body}


def export_schemas(out: Path, id_base: str = ID_BASE) -> list[Path]:
    """Write one JSON Schema per message type, the envelope and the topic catalogue."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for sid, cls in sorted(SCHEMAS.items()):
        path = out / f"{sid}.schema.json"
        path.write_text(json.dumps(json_schema(cls, sid, id_base), indent=2))
        written.append(path)
    envelope = out / "envelope.schema.json"
    envelope.write_text(json.dumps(json_schema(Envelope, "envelope", id_base), indent=2))
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
@click.option(
    "--id-base",
    default=ID_BASE,
    show_default=True,
    help="Prefix of each schema's $id (e.g. https://example.org/vigil/schemas/).",
)
def export(out: str, id_base: str) -> None:
    """Write JSON Schema (2020-12, with $id) for every message type to OUT."""
    for path in export_schemas(Path(out), id_base):
        click.echo(str(path))
