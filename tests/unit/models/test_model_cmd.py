"""`vigil model` commands: add, keygen, sign, verify, list, activate."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from tests.unit.models.conftest import add_model
from vigil.models.keys import load_trusted_keys
from vigil.models.repository import load_verified
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


@pytest.fixture
def graph(tmp_path: Path) -> Path:
    """An ONNX graph file outside any repository: y = x + 1 over float32[1, 4]."""
    path = tmp_path / "in" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(add_model(1.0))
    return path


def test_add_writes_a_version_the_loader_accepts(keys: Path, graph: Path, tmp_path: Path) -> None:
    """`model add --sign --activate` writes graph, metadata from the graph and a signature
    that verifies as the loader verifies, and makes the version active."""
    repo = tmp_path / "repo"
    code, out = run(
        "add", str(repo), "add", "3", str(graph), "--sign", str(keys / "release.key"), "--activate"
    )
    assert code == 0, out
    assert "inputs   x float32[1, 4]" in out and "outputs  y float32[1, 4]" in out
    verified = load_verified(repo / "add" / "3", load_trusted_keys(keys))
    assert verified.model_bytes == graph.read_bytes()
    assert [t.name for t in verified.metadata.inputs] == ["x"]
    assert verified.metadata.created.tzinfo is not None
    assert (repo / "add" / "latest").readlink() == Path("3")


def test_add_without_sign_leaves_the_version_unsigned(
    keys: Path, graph: Path, tmp_path: Path
) -> None:
    """Without --sign the folder has its metadata and no signature; `model sign` completes it."""
    repo = tmp_path / "repo"
    assert run("add", str(repo), "add", "1", str(graph))[0] == 0
    folder = repo / "add" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.onnx"]
    assert run("sign", str(folder), "--key", str(keys / "release.key"))[0] == 0
    assert run("verify", str(folder), "--trusted", str(keys))[0] == 0


def test_add_copies_external_data(keys: Path, tmp_path: Path) -> None:
    """A graph whose weights live in a file beside it is added with that file, and verifies."""
    source = tmp_path / "in"
    (source / "weights").mkdir(parents=True)
    proto = onnx.load_model_from_string(add_model(2.0))
    onnx.save_model(
        proto,
        source / "model.onnx",
        save_as_external_data=True,
        location="weights/b.bin",
        size_threshold=0,
    )
    repo = tmp_path / "repo"
    code, out = run(
        "add",
        str(repo),
        "add",
        "1",
        str(source / "model.onnx"),
        "--sign",
        str(keys / "release.key"),
    )
    assert code == 0, out
    verified = load_verified(repo / "add" / "1", load_trusted_keys(keys))
    assert verified.files["weights/b.bin"] == (source / "weights" / "b.bin").read_bytes()


def test_add_refuses_an_existing_version(graph: Path, tmp_path: Path) -> None:
    """A version is never overwritten: adding it again fails and leaves it as it was."""
    repo = tmp_path / "repo"
    assert run("add", str(repo), "add", "1", str(graph))[0] == 0
    before = (repo / "add" / "1" / "metadata.json").read_bytes()
    code, out = run("add", str(repo), "add", "1", str(graph))
    assert code == 1
    assert "this version exists" in out
    assert (repo / "add" / "1" / "metadata.json").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"name,value\n1,2\n", "not an ONNX graph"), (b"", "not a valid ONNX graph")],
)
def test_add_refuses_what_is_not_a_graph(tmp_path: Path, content: bytes, message: str) -> None:
    """A file that is not an ONNX graph is refused, naming why, and nothing is written."""
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    code, out = run("add", str(tmp_path / "repo"), "add", "1", str(bad))
    assert code == 1
    assert message in out
    assert not (tmp_path / "repo" / "add" / "1").exists()


def test_add_refuses_a_bad_name_and_a_missing_key(graph: Path, tmp_path: Path) -> None:
    """A version named `latest` or a key that does not exist fails before anything is written."""
    repo = tmp_path / "repo"
    code, out = run("add", str(repo), "add", "latest", str(graph))
    assert code == 1 and "is not a valid name" in out
    code, out = run("add", str(repo), "add", "1", str(graph), "--sign", str(tmp_path / "no.key"))
    assert code == 1
    assert not (repo / "add" / "1").exists()


def test_add_reads_a_graph_inside_an_installed_package(tmp_path: Path) -> None:
    """`package:<module>/<path>` names a file inside an installed wheel, as in launch files."""
    code, out = run(
        "add",
        str(tmp_path / "repo"),
        "det",
        "4.0",
        "package:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    )
    assert code == 0, out
    assert (tmp_path / "repo" / "det" / "4.0" / "metadata.json").is_file()
