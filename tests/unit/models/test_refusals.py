"""The issue's acceptance test: no tampered, truncated, foreign or unsigned model ever loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vigil.models.keys import SigningKey, TrustedKeys
from vigil.models.repository import VerifiedModel, load_active, set_latest
from vigil.models.signing import SIGNATURE_FILE, ModelRefused, RefusalReason, sign_directory

pytestmark = pytest.mark.verifies("SR-MDL-001")

Tamper = Callable[[Path, SigningKey, Callable[[Path, float], Path]], None]


def flipped_bit(repo: Path, _rogue: SigningKey, _make: Callable[[Path, float], Path]) -> None:
    path = repo / "add" / "2" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncated(repo: Path, _rogue: SigningKey, _make: Callable[[Path, float], Path]) -> None:
    path = repo / "add" / "2" / "model.onnx"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def untrusted_key(repo: Path, rogue: SigningKey, _make: Callable[[Path, float], Path]) -> None:
    sign_directory(repo / "add" / "2", rogue)


def missing_signature(repo: Path, _rogue: SigningKey, _make: Callable[[Path, float], Path]) -> None:
    (repo / "add" / "2" / SIGNATURE_FILE).unlink()


def latest_to_unsigned(repo: Path, _rogue: SigningKey, make: Callable[[Path, float], Path]) -> None:
    make(repo / "add" / "3", 3.0)
    set_latest(repo, "add", "3")


@pytest.mark.parametrize(
    "case",
    [
        (flipped_bit, RefusalReason.DIGEST_MISMATCH),
        (truncated, RefusalReason.DIGEST_MISMATCH),
        (untrusted_key, RefusalReason.UNTRUSTED_KEY),
        (missing_signature, RefusalReason.UNSIGNED),
        (latest_to_unsigned, RefusalReason.UNSIGNED),
    ],
    ids=lambda case: case[0].__name__,
)
def test_tampered_model_is_never_loaded(
    repo: Path,
    trusted: TrustedKeys,
    rogue: SigningKey,
    make_version: Callable[[Path, float], Path],
    case: tuple[Tamper, RefusalReason],
) -> None:
    """Each tampering yields its typed refusal and no VerifiedModel (so no bytes to load)."""
    tamper, reason = case
    tamper(repo, rogue, make_version)
    loaded: list[VerifiedModel] = []
    with pytest.raises(ModelRefused) as caught:
        loaded.append(load_active(repo, "add", trusted))
    assert caught.value.reason is reason
    assert loaded == []
