"""Signing and verifying a version directory: every refusal has its typed reason."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vigil.errors import VigilError
from vigil.models.keys import SigningKey, TrustedKeys
from vigil.models.signing import (
    SIGNATURE_FILE,
    ModelRefused,
    RefusalReason,
    SigningError,
    sign_directory,
    verify_directory,
)


def refusal(directory: Path, trusted: TrustedKeys) -> ModelRefused:
    with pytest.raises(ModelRefused) as caught:
        verify_directory(directory, trusted)
    return caught.value


def resign_payload(
    directory: Path, key: SigningKey, edit: Callable[[dict[str, object]], None]
) -> None:
    """Rewrite the signed statement with `edit` and sign it again with `key`."""
    sig_path = directory / SIGNATURE_FILE
    bundle = json.loads(sig_path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    edit(statement)
    payload = json.dumps(statement).encode()
    kind = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)
    signature = key.key.sign(pae, ec.ECDSA(hashes.SHA384()))
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(signature).decode()
    sig_path.write_text(json.dumps(bundle))


def test_verify_returns_every_signed_file(signed_version: Path, trusted: TrustedKeys) -> None:
    """A freshly signed directory verifies and yields the bytes of every file but the signature."""
    verified = verify_directory(signed_version, trusted)
    names = {"model.onnx", "metadata.json", "kat-inputs.npz", "kat-expected.npz"}
    assert set(verified.files) == names
    for name in names:
        assert verified.files[name] == (signed_version / name).read_bytes()
        assert verified.digests[name] == hashlib.sha256(verified.files[name]).hexdigest()


def test_verify_names_the_signer(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey
) -> None:
    """The verified result carries the key id of the trusted key that verified it."""
    assert verify_directory(signed_version, trusted).signer == signer.public.key_id


def test_nested_files_are_covered(tmp_path: Path, signer: SigningKey, trusted: TrustedKeys) -> None:
    """Files in sub-folders (external tensor data) are signed and verified too."""
    (tmp_path / "v" / "weights").mkdir(parents=True)
    (tmp_path / "v" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "v" / "weights" / "w0.bin").write_bytes(b"\x00" * 64)
    sign_directory(tmp_path / "v", signer)
    assert set(verify_directory(tmp_path / "v", trusted).files) == {"model.onnx", "weights/w0.bin"}


def test_flipped_bit_is_digest_mismatch(
    signed_version: Path, trusted: TrustedKeys, flip_bit: Callable[[Path], None]
) -> None:
    """One flipped bit in the graph is refused as DIGEST_MISMATCH naming the file."""
    flip_bit(signed_version / "model.onnx")
    refused = refusal(signed_version, trusted)
    assert (refused.reason, refused.file) == (RefusalReason.DIGEST_MISMATCH, "model.onnx")


def test_truncated_file_is_digest_mismatch(signed_version: Path, trusted: TrustedKeys) -> None:
    """A truncated graph is refused as DIGEST_MISMATCH naming the file."""
    path = signed_version / "model.onnx"
    path.write_bytes(path.read_bytes()[:-7])
    refused = refusal(signed_version, trusted)
    assert (refused.reason, refused.file) == (RefusalReason.DIGEST_MISMATCH, "model.onnx")


def test_missing_signature_is_unsigned(signed_version: Path, trusted: TrustedKeys) -> None:
    """A directory without model.sig is refused as UNSIGNED."""
    (signed_version / SIGNATURE_FILE).unlink()
    assert refusal(signed_version, trusted).reason is RefusalReason.UNSIGNED


def test_untrusted_key_is_refused(
    signed_version: Path, trusted: TrustedKeys, rogue: SigningKey
) -> None:
    """A valid signature by a key the target does not trust is refused as UNTRUSTED_KEY."""
    sign_directory(signed_version, rogue)
    assert refusal(signed_version, trusted).reason is RefusalReason.UNTRUSTED_KEY


def test_untrusted_key_without_hint_is_refused(
    signed_version: Path, trusted: TrustedKeys, rogue: SigningKey
) -> None:
    """A bundle that names no key is tried against every trusted key, and refused if none fits."""
    sign_directory(signed_version, rogue)
    sig_path = signed_version / SIGNATURE_FILE
    bundle = json.loads(sig_path.read_text())
    del bundle["verificationMaterial"]["publicKey"]
    sig_path.write_text(json.dumps(bundle))
    assert refusal(signed_version, trusted).reason is RefusalReason.UNTRUSTED_KEY


def test_edited_manifest_is_bad_signature(signed_version: Path, trusted: TrustedKeys) -> None:
    """A statement edited after signing no longer verifies under the named trusted key."""
    sig_path = signed_version / SIGNATURE_FILE
    bundle = json.loads(sig_path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig_path.write_text(json.dumps(bundle))
    assert refusal(signed_version, trusted).reason is RefusalReason.BAD_SIGNATURE


def test_hint_swapped_to_trusted_key_is_bad_signature(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey, rogue: SigningKey
) -> None:
    """A rogue signature relabelled with the trusted key's hint fails as BAD_SIGNATURE."""
    sign_directory(signed_version, rogue)
    sig_path = signed_version / SIGNATURE_FILE
    bundle = json.loads(sig_path.read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = signer.public.hint
    sig_path.write_text(json.dumps(bundle))
    assert refusal(signed_version, trusted).reason is RefusalReason.BAD_SIGNATURE


def test_truncated_signature_is_malformed(signed_version: Path, trusted: TrustedKeys) -> None:
    """A truncated model.sig is refused as MALFORMED."""
    sig_path = signed_version / SIGNATURE_FILE
    sig_path.write_bytes(sig_path.read_bytes()[:100])
    assert refusal(signed_version, trusted).reason is RefusalReason.MALFORMED


def test_extra_file_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A file the signature does not cover is refused as EXTRA_FILE naming it."""
    (signed_version / "extra.onnx").write_bytes(b"unsigned")
    refused = refusal(signed_version, trusted)
    assert (refused.reason, refused.file) == (RefusalReason.EXTRA_FILE, "extra.onnx")


def test_missing_file_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A signed file that is absent is refused as MISSING_FILE naming it."""
    (signed_version / "kat-expected.npz").unlink()
    refused = refusal(signed_version, trusted)
    assert (refused.reason, refused.file) == (RefusalReason.MISSING_FILE, "kat-expected.npz")


def test_missing_directory_is_refused(tmp_path: Path, trusted: TrustedKeys) -> None:
    """A version directory that does not exist is refused as MISSING_FILE."""
    assert refusal(tmp_path / "nowhere", trusted).reason is RefusalReason.MISSING_FILE


def test_escaping_symlink_is_refused(
    signed_version: Path, trusted: TrustedKeys, tmp_path: Path
) -> None:
    """A symlink inside the version directory that leads out of it is PATH_ESCAPE."""
    (tmp_path / "outside.bin").write_bytes(b"x")
    (signed_version / "data.bin").symlink_to(tmp_path / "outside.bin")
    refused = refusal(signed_version, trusted)
    assert (refused.reason, refused.file) == (RefusalReason.PATH_ESCAPE, "data.bin")


def test_relative_escaping_symlink_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A relative symlink climbing out with `..` is PATH_ESCAPE too."""
    (signed_version / "sub").mkdir()
    (signed_version / "sub" / "up").symlink_to("../../2/model.onnx")
    assert refusal(signed_version, trusted).reason is RefusalReason.PATH_ESCAPE


def test_inner_symlink_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A symlink that stays inside the directory is still refused (SYMLINK): none is followed."""
    (signed_version / "alias.onnx").symlink_to("model.onnx")
    assert refusal(signed_version, trusted).reason is RefusalReason.SYMLINK


def test_fifo_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A FIFO in the directory is refused as NOT_REGULAR, without blocking on it."""
    os.mkfifo(signed_version / "pipe")
    assert refusal(signed_version, trusted).reason is RefusalReason.NOT_REGULAR


def test_signed_name_climbing_out_is_path_escape(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey
) -> None:
    """A validly signed manifest naming `../x` is refused as PATH_ESCAPE."""

    def edit(statement: dict[str, object]) -> None:
        predicate = statement["predicate"]
        assert isinstance(predicate, dict)
        predicate["resources"][0]["name"] = "../1/model.onnx"

    resign_payload(signed_version, signer, edit)
    assert refusal(signed_version, trusted).reason is RefusalReason.PATH_ESCAPE


def test_inconsistent_subject_digest_is_malformed(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey
) -> None:
    """A signed subject digest that does not match the listed files is MALFORMED."""

    def edit(statement: dict[str, object]) -> None:
        statement["subject"] = [{"name": "1", "digest": {"sha256": "0" * 64}}]

    resign_payload(signed_version, signer, edit)
    assert refusal(signed_version, trusted).reason is RefusalReason.MALFORMED


def test_other_predicate_type_is_malformed(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey
) -> None:
    """A statement of another predicate type is MALFORMED, even if signed by a trusted key."""

    def edit(statement: dict[str, object]) -> None:
        statement["predicateType"] = "https://model_signing/Digests/v0.1"

    resign_payload(signed_version, signer, edit)
    assert refusal(signed_version, trusted).reason is RefusalReason.MALFORMED


def test_file_grown_during_load_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A file appended to after it was read, before the load ends, is CHANGED_DURING_LOAD."""

    def writer(name: str, _size: int) -> None:
        if name == "kat-expected.npz":
            with (signed_version / "kat-expected.npz").open("ab") as f:
                f.write(b"more")

    with pytest.raises(ModelRefused) as caught:
        verify_directory(signed_version, trusted, on_file_read=writer)
    assert caught.value.reason is RefusalReason.CHANGED_DURING_LOAD


def test_file_replaced_during_load_is_refused(signed_version: Path, trusted: TrustedKeys) -> None:
    """A file swapped for an identical copy during the load is CHANGED_DURING_LOAD."""

    def swapper(name: str, _size: int) -> None:
        if name == "kat-expected.npz":
            copy = signed_version / "copy.tmp"
            copy.write_bytes((signed_version / name).read_bytes())
            os.replace(copy, signed_version / name)

    with pytest.raises(ModelRefused) as caught:
        verify_directory(signed_version, trusted, on_file_read=swapper)
    assert caught.value.reason is RefusalReason.CHANGED_DURING_LOAD


def test_returned_bytes_do_not_follow_the_file(
    signed_version: Path, trusted: TrustedKeys, flip_bit: Callable[[Path], None]
) -> None:
    """Tampering after verification cannot reach the verified bytes: they are a copy."""
    verified = verify_directory(signed_version, trusted)
    flip_bit(signed_version / "model.onnx")
    onnx_bytes = verified.files["model.onnx"]
    assert hashlib.sha256(onnx_bytes).hexdigest() == verified.digests["model.onnx"]


def test_signature_is_checked_before_any_file_is_read(
    signed_version: Path, trusted: TrustedKeys, rogue: SigningKey
) -> None:
    """An untrusted signature is refused before a single model file is read."""
    sign_directory(signed_version, rogue)
    reads: list[str] = []
    with pytest.raises(ModelRefused):
        verify_directory(signed_version, trusted, on_file_read=lambda n, _s: reads.append(n))
    assert reads == []


def test_sign_refuses_symlinks(tmp_path: Path, signer: SigningKey) -> None:
    """Signing a directory holding a symlink fails with SigningError."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "v" / "alias").symlink_to("model.onnx")
    with pytest.raises(SigningError):
        sign_directory(tmp_path / "v", signer)


def test_sign_refuses_git_metadata(tmp_path: Path, signer: SigningKey) -> None:
    """Signing a directory holding git metadata fails: OpenSSF verifiers would skip it."""
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "model.onnx").write_bytes(b"graph")
    (tmp_path / "v" / ".gitignore").write_bytes(b"*.tmp\n")
    with pytest.raises(SigningError):
        sign_directory(tmp_path / "v", signer)


def test_resigning_replaces_the_signature(
    signed_version: Path, trusted: TrustedKeys, signer: SigningKey
) -> None:
    """Signing again replaces model.sig and leaves no temporary file behind."""
    sign_directory(signed_version, signer)
    assert not [p for p in signed_version.iterdir() if p.name.endswith(".tmp")]
    verify_directory(signed_version, trusted)


def test_refusal_is_a_vigil_error(signed_version: Path, trusted: TrustedKeys) -> None:
    """ModelRefused is a VigilError whose message names the reason and the directory."""
    (signed_version / SIGNATURE_FILE).unlink()
    refused = refusal(signed_version, trusted)
    assert isinstance(refused, VigilError)
    assert "unsigned" in str(refused)
    assert str(signed_version) in str(refused)
