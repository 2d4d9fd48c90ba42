"""Key generation, the private key file's mode, and the trusted key set."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vigil.models.keys import (
    KeyFileError,
    generate_key_pair,
    load_private_key,
    load_public_key,
    load_trusted_keys,
)


def test_keygen_writes_private_key_0600(tmp_path: Path) -> None:
    """The private key file is created with mode 0600."""
    pair = generate_key_pair(tmp_path, "k")
    assert stat.S_IMODE(pair.private.stat().st_mode) == 0o600
    assert pair.private.name == "k.key"
    assert pair.public.name == "k.pub"


def test_keygen_makes_p384(tmp_path: Path) -> None:
    """Generated keys are ECDSA on P-384."""
    pair = generate_key_pair(tmp_path, "k")
    assert isinstance(load_public_key(pair.public).key.curve, ec.SECP384R1)


def test_key_id_is_sha256_of_der(tmp_path: Path) -> None:
    """The key id is the SHA-256 of the DER SubjectPublicKeyInfo."""
    pair = generate_key_pair(tmp_path, "k")
    public = load_public_key(pair.public)
    der = public.key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pair.key_id == public.key_id == hashlib.sha256(der).hexdigest()


def test_hint_is_sha256_of_pem(tmp_path: Path) -> None:
    """The OpenSSF bundle hint is the SHA-256 of the PEM public key file's content."""
    pair = generate_key_pair(tmp_path, "k")
    assert load_public_key(pair.public).hint == hashlib.sha256(pair.public.read_bytes()).hexdigest()


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    """Generating a key over an existing one fails and keeps the old key."""
    pair = generate_key_pair(tmp_path, "k")
    before = pair.private.read_bytes()
    with pytest.raises(KeyFileError):
        generate_key_pair(tmp_path, "k")
    assert pair.private.read_bytes() == before


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A private key whose mode lets group or others read it is refused."""
    pair = generate_key_pair(tmp_path, "k")
    os.chmod(pair.private, 0o644)
    with pytest.raises(KeyFileError, match="0644"):
        load_private_key(pair.private)


def test_other_curve_is_refused(tmp_path: Path) -> None:
    """A P-256 public key is refused: vigil signs with P-384 only."""
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "p256.pub").write_bytes(pem)
    with pytest.raises(KeyFileError, match="P-384"):
        load_public_key(tmp_path / "p256.pub")


def test_garbage_public_key_is_refused(tmp_path: Path) -> None:
    """A file that is not PEM is refused with KeyFileError."""
    (tmp_path / "junk.pub").write_bytes(b"not a key")
    with pytest.raises(KeyFileError):
        load_public_key(tmp_path / "junk.pub")


def test_trusted_keys_from_directory(tmp_path: Path) -> None:
    """Every *.pub in a directory is trusted; private keys and other files are not read."""
    a = generate_key_pair(tmp_path, "a")
    b = generate_key_pair(tmp_path, "b")
    (tmp_path / "README").write_text("trusted keys")
    trusted = load_trusted_keys(tmp_path)
    assert {k.key_id for k in trusted} == {a.key_id, b.key_id}


def test_trusted_keys_from_one_file(tmp_path: Path) -> None:
    """A single public key file is a trusted set of one."""
    a = generate_key_pair(tmp_path, "a")
    generate_key_pair(tmp_path, "b")
    trusted = load_trusted_keys(a.public)
    assert [k.key_id for k in trusted] == [a.key_id]


def test_empty_trusted_directory_is_an_error(tmp_path: Path) -> None:
    """A trusted key directory with no public key is a configuration error."""
    with pytest.raises(KeyFileError, match="no trusted public key"):
        load_trusted_keys(tmp_path)


def test_lookup_by_hint_and_id(tmp_path: Path) -> None:
    """A trusted key is found by its bundle hint and by its key id."""
    pair = generate_key_pair(tmp_path, "a")
    trusted = load_trusted_keys(tmp_path)
    key = load_public_key(pair.public)
    assert trusted.by_hint(key.hint) == key
    assert trusted.by_id(pair.key_id) == key
    assert trusted.by_hint("0" * 64) is None
