"""`vigil model` commands: keygen, sign, verify, list, activate."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.tools.model_cmd import model


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A key directory made by `vigil model keygen --name release`."""
    out = tmp_path / "keys"
    result = CliRunner().invoke(model, ["keygen", "--out", str(out), "--name", "release"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def version(tmp_path: Path, make_version: Callable[[Path, float], Path]) -> Path:
    """An unsigned version directory `models/add/1`."""
    return make_version(tmp_path / "models" / "add" / "1", 1.0)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(model, list(args))
    return result.exit_code, result.output


def test_keygen_writes_both_halves(keys: Path) -> None:
    """keygen writes NAME.key (0600) and NAME.pub."""
    assert stat.S_IMODE((keys / "release.key").stat().st_mode) == 0o600
    assert (keys / "release.pub").is_file()


def test_sign_then_verify_succeeds(keys: Path, version: Path) -> None:
    """A directory signed with the key verifies against the key directory."""
    code, out = run("sign", str(version), "--key", str(keys / "release.key"))
    assert code == 0, out
    code, out = run("verify", str(version), "--trusted", str(keys))
    assert code == 0, out
    assert "verified add/1" in out


def test_verify_unsigned_fails_naming_reason(keys: Path, version: Path) -> None:
    """verify exits non-zero and names UNSIGNED for a directory without model.sig."""
    code, out = run("verify", str(version), "--trusted", str(keys / "release.pub"))
    assert code == 1
    assert "REFUSED UNSIGNED" in out


def test_verify_tampered_fails_naming_file(keys: Path, version: Path) -> None:
    """verify names DIGEST_MISMATCH and the file that changed."""
    run("sign", str(version), "--key", str(keys / "release.key"))
    with (version / "model.onnx").open("ab") as f:
        f.write(b"\x00")
    code, out = run("verify", str(version), "--trusted", str(keys))
    assert code == 1
    assert "REFUSED DIGEST_MISMATCH" in out
    assert "model.onnx" in out


def test_verify_with_empty_trust_fails(tmp_path: Path, version: Path) -> None:
    """verify with a key directory holding no public key exits non-zero."""
    (tmp_path / "empty").mkdir()
    code, out = run("verify", str(version), "--trusted", str(tmp_path / "empty"))
    assert code == 1
    assert "trusted keys" in out


def test_sign_refuses_missing_metadata(keys: Path, tmp_path: Path) -> None:
    """sign refuses a directory the loader would refuse for lack of metadata."""
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.onnx").write_bytes(b"graph")
    code, out = run("sign", str(bare), "--key", str(keys / "release.key"))
    assert code == 1
    assert "metadata.json" in out


def test_list_and_activate(keys: Path, version: Path) -> None:
    """list shows versions, signature presence and the active one after activate."""
    run("sign", str(version), "--key", str(keys / "release.key"))
    repo = version.parent.parent
    code, out = run("activate", str(repo), "add", "1")
    assert code == 0, out
    code, out = run("list", str(repo))
    assert code == 0, out
    assert "add  (active: 1)" in out
    assert "active, signed" in out
