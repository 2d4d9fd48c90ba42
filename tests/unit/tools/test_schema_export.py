"""`vigil schema export`: JSON Schema 2020-12 documents with `$id`, bytes marked as `bin`."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
from click.testing import CliRunner

from vigil.bus.envelope import Envelope
from vigil.schemas import SCHEMAS, DiagCode, DiagnosticEvent, Severity
from vigil.tools.cli import cli
from vigil.tools.schema_cmd import DIALECT


def _export(folder: Path, *extra: str) -> dict[str, dict[str, object]]:
    result = CliRunner().invoke(cli, ["schema", "export", "--out", str(folder), *extra])
    assert result.exit_code == 0, result.output
    return {p.name: json.loads(p.read_text()) for p in folder.glob("*.schema.json")}


def test_every_schema_is_2020_12_with_a_unique_id(tmp_path: Path) -> None:
    """Each exported document names the 2020-12 dialect, is a valid schema of it, and has an
    `$id` of its own made of the base and its schema id."""
    schemas = _export(tmp_path)
    assert len(schemas) == len(SCHEMAS) + 1  # and the envelope
    ids = set()
    for name, document in schemas.items():
        assert document["$schema"] == DIALECT, name
        jsonschema.Draft202012Validator.check_schema(document)
        ids.add(document["$id"])
        assert document["$id"] == f"urn:vigil:schema:{name.removesuffix('.schema.json')}"
    assert len(ids) == len(schemas)


def test_id_base_is_configurable(tmp_path: Path) -> None:
    """`--id-base` sets the prefix of every `$id`."""
    schemas = _export(tmp_path, "--id-base", "https://example.org/vigil/")
    assert schemas["diag.event.schema.json"]["$id"] == "https://example.org/vigil/diag.event"


def test_bytes_fields_are_marked_as_msgpack_bin(tmp_path: Path) -> None:
    """A bytes field (the envelope's trace id) is a base64 string in JSON and says it is a
    MessagePack `bin` on the bus; the document's comment explains the mapping."""
    envelope = _export(tmp_path)["envelope.schema.json"]
    defs = envelope["$defs"]
    assert isinstance(defs, dict)
    # The envelope is a MessagePack array: its fields are items in declaration order.
    trace_id = defs["Envelope"]["prefixItems"][Envelope.__struct_fields__.index("trace_id")]
    assert trace_id["contentEncoding"] == "base64"
    assert trace_id["x-msgpack"] == "bin"
    assert "MessagePack bin" in str(envelope["$comment"])


def test_real_messages_validate_against_their_schemas(tmp_path: Path) -> None:
    """A message and an envelope as vigil encodes them (in JSON) validate against the exported
    schemas; a wrong value does not."""
    schemas = _export(tmp_path)
    event = DiagnosticEvent(
        code=DiagCode.RANGE_OR_SEQUENCE, severity=Severity.ERROR, node="ingest", message="x"
    )
    diag = schemas["diag.event.schema.json"]
    jsonschema.validate(msgspec.to_builtins(event), diag)
    envelope = Envelope(schema="diag.event", seq=1, source="ingest", trace_id=b"\x01" * 16)
    jsonschema.validate(json.loads(msgspec.json.encode(envelope)), schemas["envelope.schema.json"])
    wrong = {**msgspec.to_builtins(event), "severity": "LOUD"}
    assert not jsonschema.Draft202012Validator(diag).is_valid(wrong)
