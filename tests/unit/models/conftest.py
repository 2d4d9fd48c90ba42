"""Fixtures for the model repository tests: tiny ONNX graphs, key pairs, signed versions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vigil.models.keys import (
    KeyPairPaths,
    SigningKey,
    TrustedKeys,
    generate_key_pair,
    load_private_key,
    load_trusted_keys,
)
from vigil.models.repository import (
    KnownAnswer,
    metadata_from_onnx,
    set_latest,
    write_metadata,
)
from vigil.models.signing import sign_directory

CREATED = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def add_model(offset: float = 1.0) -> bytes:
    """An ONNX graph computing y = x + offset over float32[1, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    b = numpy_helper.from_array(np.full((1, 4), offset, dtype=np.float32), name="b")
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "add", [x], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def write_version(directory: Path, offset: float = 1.0) -> Path:
    """A complete, unsigned version directory: graph, metadata and a known-answer vector."""
    directory.mkdir(parents=True)
    onnx_bytes = add_model(offset)
    (directory / "model.onnx").write_bytes(onnx_bytes)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.savez(directory / "kat-inputs.npz", x=x)
    np.savez(directory / "kat-expected.npz", y=x + np.float32(offset))
    kat = KnownAnswer(inputs="kat-inputs.npz", expected="kat-expected.npz")
    write_metadata(directory, metadata_from_onnx(onnx_bytes, created=CREATED, known_answer=kat))
    return directory


@pytest.fixture(scope="session")
def key_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPairPaths, KeyPairPaths]:
    """A trusted and an untrusted key pair, each in its own directory (made once)."""
    base = tmp_path_factory.mktemp("keys")
    return generate_key_pair(base / "trusted", "release"), generate_key_pair(
        base / "untrusted", "rogue"
    )


@pytest.fixture
def signer(key_dirs: tuple[KeyPairPaths, KeyPairPaths]) -> SigningKey:
    """The trusted signing key."""
    return load_private_key(key_dirs[0].private)


@pytest.fixture
def rogue(key_dirs: tuple[KeyPairPaths, KeyPairPaths]) -> SigningKey:
    """A valid key that the target does not trust."""
    return load_private_key(key_dirs[1].private)


@pytest.fixture
def trusted(key_dirs: tuple[KeyPairPaths, KeyPairPaths]) -> TrustedKeys:
    """The target's trusted keys: only the release key."""
    return load_trusted_keys(key_dirs[0].public.parent)


@pytest.fixture
def repo(tmp_path: Path, signer: SigningKey) -> Path:
    """A repository with model `add`: versions 1 and 2 signed, `latest` -> 2."""
    root = tmp_path / "models"
    for version, offset in (("1", 1.0), ("2", 2.0)):
        sign_directory(write_version(root / "add" / version, offset), signer)
    set_latest(root, "add", "2")
    return root


@pytest.fixture
def signed_version(repo: Path) -> Path:
    """One signed version directory of the repository."""
    return repo / "add" / "1"


Flip = Callable[[Path], None]


@pytest.fixture
def flip_bit() -> Flip:
    """Flip the lowest bit of the middle byte of a file."""

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

    return flip


@pytest.fixture
def make_version() -> Callable[[Path, float], Path]:
    """The builder of complete, unsigned version directories."""
    return write_version
