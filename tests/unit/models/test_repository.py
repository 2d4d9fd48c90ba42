"""Repository layout, the active version, verified loading and the known-answer vector."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import onnxruntime as ort
import pytest

from vigil.models.keys import SigningKey, TrustedKeys
from vigil.models.repository import (
    LATEST_LINK,
    METADATA_FILE,
    ModelMetadata,
    RepositoryConfig,
    RepositoryError,
    list_models,
    load_active,
    load_verified,
    read_known_answer,
    resolve_version,
    set_latest,
)
from vigil.models.signing import ModelRefused, RefusalReason, sign_directory


def test_list_models_shows_versions_and_active(repo: Path) -> None:
    """Listing names each model, its versions in order, and the active one."""
    [entry] = list_models(repo)
    assert entry.name == "add"
    assert [v.version for v in entry.versions] == ["1", "2"]
    assert all(v.has_signature for v in entry.versions)
    assert entry.active == "2"


def test_versions_sort_naturally(repo: Path, make_version: Callable[[Path, float], Path]) -> None:
    """Version 10 sorts after version 2."""
    make_version(repo / "add" / "10", 3.0)
    [entry] = list_models(repo)
    assert [v.version for v in entry.versions] == ["1", "2", "10"]
    assert not entry.versions[-1].has_signature


def test_latest_resolves_to_real_version(repo: Path) -> None:
    """With no pinned version the `latest` link is followed to a real directory."""
    assert resolve_version(repo, "add") == (repo / "add" / "2").resolve()


def test_pinned_version_wins(repo: Path, trusted: TrustedKeys) -> None:
    """A configured version is loaded whatever `latest` says."""
    assert load_active(repo, "add", trusted, version="1").version == "1"


def test_load_active_hands_over_runnable_bytes(repo: Path, trusted: TrustedKeys) -> None:
    """The verified ONNX bytes run in onnxruntime and pass the known-answer vector."""
    model = load_active(repo, "add", trusted)
    session = ort.InferenceSession(model.model_bytes, providers=["CPUExecutionProvider"])
    kat = read_known_answer(model)
    assert kat is not None
    outputs = session.run(None, kat.inputs)
    names = [o.name for o in session.get_outputs()]
    assert kat.mismatches(dict(zip(names, outputs, strict=True))) == []


def test_known_answer_mismatch_is_reported(repo: Path, trusted: TrustedKeys) -> None:
    """An output outside tolerance is named by the known-answer check."""
    kat = read_known_answer(load_active(repo, "add", trusted))
    assert kat is not None
    assert kat.mismatches({"y": kat.expected["y"] + 1.0}) == ["y"]
    assert kat.mismatches({}) == ["y"]


def test_metadata_carries_the_graph_signature(repo: Path, trusted: TrustedKeys) -> None:
    """The metadata names the graph's inputs and outputs with dtype and shape."""
    meta = load_active(repo, "add", trusted).metadata
    assert [(t.name, t.dtype, t.shape) for t in meta.inputs] == [("x", "float32", [1, 4])]
    assert [(t.name, t.dtype, t.shape) for t in meta.outputs] == [("y", "float32", [1, 4])]
    assert meta.created.tzinfo is not None


def test_model_digest_and_signer(repo: Path, trusted: TrustedKeys, signer: SigningKey) -> None:
    """The loaded model reports the SHA-256 of its graph and the signer's key id."""
    model = load_active(repo, "add", trusted)
    assert model.model_sha256 == hashlib.sha256(model.model_bytes).hexdigest()
    assert model.signer == signer.public.key_id
    assert (model.name, model.version) == ("add", "2")


def test_latest_repointed_to_unsigned_is_refused(
    repo: Path, trusted: TrustedKeys, make_version: Callable[[Path, float], Path]
) -> None:
    """`latest` re-pointed at an unsigned sibling is refused as UNSIGNED."""
    make_version(repo / "add" / "3", 3.0)
    set_latest(repo, "add", "3")
    with pytest.raises(ModelRefused) as caught:
        load_active(repo, "add", trusted)
    assert caught.value.reason is RefusalReason.UNSIGNED


def test_latest_pointing_outside_is_path_escape(
    repo: Path, trusted: TrustedKeys, tmp_path: Path
) -> None:
    """`latest` pointing outside the model's folder is refused as PATH_ESCAPE, signed or not."""
    link = repo / "add" / LATEST_LINK
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(ModelRefused) as caught:
        load_active(repo, "add", trusted)
    assert caught.value.reason is RefusalReason.PATH_ESCAPE


def test_no_latest_is_repository_error(repo: Path, trusted: TrustedKeys) -> None:
    """Without `latest` and without a pinned version there is no active version."""
    (repo / "add" / LATEST_LINK).unlink()
    with pytest.raises(RepositoryError, match="no active version"):
        load_active(repo, "add", trusted)


def test_unknown_model_is_repository_error(repo: Path, trusted: TrustedKeys) -> None:
    """Asking for a model the repository does not hold is a RepositoryError."""
    with pytest.raises(RepositoryError, match="no such model"):
        load_active(repo, "nope", trusted)


def test_bad_version_name_is_repository_error(repo: Path) -> None:
    """A version name with a path separator is refused before touching the file system."""
    with pytest.raises(RepositoryError):
        resolve_version(repo, "add", "../add/1")


def test_signed_but_no_metadata_is_malformed(
    tmp_path: Path, signer: SigningKey, trusted: TrustedKeys
) -> None:
    """A validly signed directory without metadata.json is refused as MALFORMED."""
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"graph")
    sign_directory(version, signer)
    with pytest.raises(ModelRefused) as caught:
        load_verified(version, trusted)
    assert caught.value.reason is RefusalReason.MALFORMED


def test_metadata_naming_unsigned_file_is_malformed(
    signed_version: Path, signer: SigningKey, trusted: TrustedKeys
) -> None:
    """Metadata whose model_file is not among the signed files is MALFORMED."""
    path = signed_version / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["model_file"] = "other.onnx"
    path.write_text(json.dumps(meta))
    sign_directory(signed_version, signer)
    with pytest.raises(ModelRefused) as caught:
        load_verified(signed_version, trusted)
    assert (caught.value.reason, caught.value.file) == (RefusalReason.MALFORMED, METADATA_FILE)


def test_metadata_with_unknown_field_is_malformed(
    signed_version: Path, signer: SigningKey, trusted: TrustedKeys
) -> None:
    """Metadata with a field vigil does not know is refused, never silently ignored."""
    path = signed_version / METADATA_FILE
    meta = json.loads(path.read_text())
    meta["mystery"] = 1
    path.write_text(json.dumps(meta))
    sign_directory(signed_version, signer)
    with pytest.raises(ModelRefused) as caught:
        load_verified(signed_version, trusted)
    assert caught.value.reason is RefusalReason.MALFORMED


def test_set_latest_switches_the_active_version(repo: Path, trusted: TrustedKeys) -> None:
    """`set_latest` re-points the link and leaves no temporary link behind."""
    set_latest(repo, "add", "1")
    assert load_active(repo, "add", trusted).version == "1"
    assert sorted(p.name for p in (repo / "add").iterdir()) == ["1", "2", LATEST_LINK]


def test_set_latest_refuses_missing_version(repo: Path) -> None:
    """`set_latest` to a version that does not exist is a RepositoryError."""
    with pytest.raises(RepositoryError):
        set_latest(repo, "add", "9")


def test_repository_config_rejects_unknown_keys() -> None:
    """The launch-file section is strict: an unknown key is an error."""
    raw = b'{"root": "models", "model": "add", "trusted_keys": "keys", "verison": "1"}'
    with pytest.raises(msgspec.ValidationError, match="verison"):
        msgspec.json.decode(raw, type=RepositoryConfig)


def test_metadata_rejects_unknown_dtype() -> None:
    """A tensor dtype outside the supported set is a validation error."""
    raw = (
        b'{"inputs": [{"name": "x", "dtype": "complex64", "shape": [1]}],'
        b' "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch"]}],'
        b' "created": "2025-01-01T00:00:00Z"}'
    )
    with pytest.raises(msgspec.ValidationError, match="complex64"):
        msgspec.json.decode(raw, type=ModelMetadata)


def test_kat_arrays_are_decoded_without_pickle(repo: Path, trusted: TrustedKeys) -> None:
    """The known-answer arrays decode from the verified bytes with their dtype."""
    kat = read_known_answer(load_active(repo, "add", trusted))
    assert kat is not None
    assert kat.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("field", "edit"),
    [
        ("inputs", lambda specs: [{**specs[0], "shape": [1, 8]}]),
        ("inputs", lambda specs: [{**specs[0], "dtype": "float16"}]),
        ("outputs", lambda specs: [{**specs[0], "name": "z"}]),
        ("outputs", lambda specs: [*specs, {**specs[0], "name": "extra"}]),
    ],
    ids=["input shape", "input dtype", "output name", "extra output"],
)
def test_metadata_that_misdescribes_the_graph_is_refused(
    signed_version: Path,
    signer: SigningKey,
    trusted: TrustedKeys,
    field: str,
    edit: Callable[[list[dict[str, object]]], list[dict[str, object]]],
) -> None:
    """Correctly signed metadata whose inputs or outputs differ from the graph's own is
    refused as SIGNATURE_MISMATCH, naming both signatures."""
    path = signed_version / METADATA_FILE
    meta = json.loads(path.read_text())
    meta[field] = edit(meta[field])
    path.write_text(json.dumps(meta))
    sign_directory(signed_version, signer)
    with pytest.raises(ModelRefused) as caught:
        load_verified(signed_version, trusted)
    refused = caught.value
    assert (refused.reason, refused.file) == (RefusalReason.SIGNATURE_MISMATCH, METADATA_FILE)
    assert f"{field} [" in refused.detail and "in the graph" in refused.detail


def test_a_model_file_that_is_not_a_graph_is_refused(
    signed_version: Path, signer: SigningKey, trusted: TrustedKeys
) -> None:
    """A signed model file that does not parse as ONNX never reaches the engine."""
    (signed_version / "model.onnx").write_bytes(b"\xff" * 64)
    sign_directory(signed_version, signer)
    with pytest.raises(ModelRefused) as caught:
        load_verified(signed_version, trusted)
    assert (caught.value.reason, caught.value.file) == (
        RefusalReason.SIGNATURE_MISMATCH,
        "model.onnx",
    )
