"""Interoperability with the OpenSSF `model_signing` library in key mode, both directions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from vigil.models.keys import KeyPairPaths, TrustedKeys, load_private_key
from vigil.models.signing import (
    SIGNATURE_FILE,
    ModelRefused,
    RefusalReason,
    sign_directory,
    verify_directory,
)

model_signing = pytest.importorskip("model_signing")


def ms_verify(directory: Path, public_key: Path) -> None:
    config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    config.verify(directory, directory / SIGNATURE_FILE)


def ms_sign(directory: Path, private_key: Path) -> None:
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    config = (
        model_signing.signing.Config()
        .use_elliptic_key_signer(private_key=private_key)
        .set_hashing_config(hashing)
    )
    config.sign(directory, directory / SIGNATURE_FILE)


@pytest.fixture
def nested_version(tmp_path: Path, make_version: Callable[[Path, float], Path]) -> Path:
    """A version with a nested external-data file, names that sort differently by path."""
    version = make_version(tmp_path / "add" / "1", 1.0)
    (version / "weights").mkdir()
    (version / "weights" / "w0.bin").write_bytes(bytes(range(256)))
    (version / "weights.bin").write_bytes(b"\x01" * 32)
    return version


def test_vigil_signature_verifies_with_model_signing(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths]
) -> None:
    """A directory signed by vigil verifies with model_signing's key-mode verifier."""
    sign_directory(nested_version, load_private_key(key_dirs[0].private))
    ms_verify(nested_version, key_dirs[0].public)


def test_model_signing_signature_verifies_with_vigil(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths], trusted: TrustedKeys
) -> None:
    """A directory signed by model_signing verifies with vigil and names the same signer."""
    ms_sign(nested_version, key_dirs[0].private)
    verified = verify_directory(nested_version, trusted)
    assert verified.signer == key_dirs[0].key_id
    assert "weights/w0.bin" in verified.files


def test_same_subject_digest_both_ways(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths], trusted: TrustedKeys
) -> None:
    """Both signers produce the same subject digest for the same files."""
    sign_directory(nested_version, load_private_key(key_dirs[0].private))
    ours = verify_directory(nested_version, trusted).root_digest
    ms_sign(nested_version, key_dirs[0].private)
    assert verify_directory(nested_version, trusted).root_digest == ours


def test_model_signing_rejects_vigil_signed_tampering(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths]
) -> None:
    """model_signing refuses a vigil-signed directory whose file was changed."""
    sign_directory(nested_version, load_private_key(key_dirs[0].private))
    (nested_version / "weights" / "w0.bin").write_bytes(b"changed")
    with pytest.raises(ValueError, match="Signature mismatch"):
        ms_verify(nested_version, key_dirs[0].public)


def test_model_signing_signature_from_untrusted_key_is_refused(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths], trusted: TrustedKeys
) -> None:
    """A model_signing signature by a key vigil does not trust is UNTRUSTED_KEY."""
    ms_sign(nested_version, key_dirs[1].private)
    with pytest.raises(ModelRefused) as caught:
        verify_directory(nested_version, trusted)
    assert caught.value.reason is RefusalReason.UNTRUSTED_KEY


def test_vigil_refuses_model_signing_signed_tampering(
    nested_version: Path, key_dirs: tuple[KeyPairPaths, KeyPairPaths], trusted: TrustedKeys
) -> None:
    """vigil refuses a model_signing-signed directory whose file was changed."""
    ms_sign(nested_version, key_dirs[0].private)
    (nested_version / "weights" / "w0.bin").write_bytes(b"changed")
    with pytest.raises(ModelRefused) as caught:
        verify_directory(nested_version, trusted)
    assert (caught.value.reason, caught.value.file) == (
        RefusalReason.DIGEST_MISMATCH,
        "weights/w0.bin",
    )
