"""Audit ids: stable numbers in classes, and the documented table that maps them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vigil.schemas import AuditClass, AuditId, audit_class

pytestmark = pytest.mark.verifies("SR-LOG-003")

DOC = Path(__file__).resolve().parents[3] / "docs" / "audit.md"
_ROW = re.compile(r"^\| (?P<id>\d{4}) \| (?P<name>[A-Z_]+) \| (?P<cls>[a-z ]+) \|")


def _documented() -> dict[int, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            rows[int(match["id"])] = (match["name"], match["cls"])
    return rows


def test_documented_table_matches_the_ids() -> None:
    """docs/audit.md lists every AuditId with its number, name and class, and nothing else."""
    documented = _documented()
    assert documented == {
        int(e): (e.name, audit_class(e).name.lower().replace("_", " ")) for e in AuditId
    }


def test_every_id_is_in_its_class_thousands() -> None:
    """An id's thousands name its class, and every class has at least one event."""
    for event in AuditId:
        assert audit_class(event) is AuditClass(int(event) // 1000)
        assert 1 <= int(event) % 1000 < 1000
    assert {audit_class(e) for e in AuditId} == set(AuditClass)


def test_ids_are_stable() -> None:
    """Ids never move: a record sealed today reads the same tomorrow."""
    assert {e.name: int(e) for e in AuditId} == {
        "STATE_TRANSITION": 1001,
        "NODE_STARTED": 1002,
        "NODE_STOPPED": 1003,
        "NODE_RESTARTED": 2001,
        "NODE_FAILED": 2002,
        "LOG_GAP": 2003,
        "REQUEST_REJECTED": 2004,
        "LAUNCH_CONFIGURED": 3001,
        "MODEL_SEEN": 4001,
        "MODEL_VERIFIED": 4002,
        "MODEL_LOADING": 4003,
        "MODEL_READY": 4004,
        "MODEL_COMMITTED": 4005,
        "MODEL_ROLLED_BACK": 4006,
        "MODEL_SWITCHED": 4007,
        "MODEL_REFUSED": 5001,
        "AUTH_REFUSED": 5002,
        "CONNECTION_REFUSED": 5003,
    }
