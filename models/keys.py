"""Model-signing keys: generate a P-384 pair, load a private key, load the trusted public keys."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vigil.errors import VigilError

__all__ = [
    "PRIVATE_SUFFIX",
    "PUBLIC_SUFFIX",
    "KeyFileError",
    "KeyPairPaths",
    "PublicKey",
    "SigningKey",
    "TrustedKeys",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "pem_hint",
]

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"

# A PEM key is a few hundred bytes; anything larger is not a key file.
_MAX_KEY_FILE = 64 * 1024


class KeyFileError(VigilError):
    """A key file is missing, unreadable, too open, or not an ECDSA P-384 key."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id vigil logs and prints: SHA-256 (hex) of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def pem_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The OpenSSF key-mode bundle hint: SHA-256 (hex) of the PEM SubjectPublicKeyInfo."""
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A P-384 public key with its vigil key id and its OpenSSF bundle hint."""

    key: ec.EllipticCurvePublicKey
    key_id: str
    hint: str
    source: str

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePublicKey, source: str) -> PublicKey:
        """Wrap a public key, computing its id and hint once."""
        return cls(key=key, key_id=key_id(key), hint=pem_hint(key), source=source)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A P-384 private key and its public half."""

    key: ec.EllipticCurvePrivateKey
    public: PublicKey


@dataclass(frozen=True, slots=True)
class KeyPairPaths:
    """Where `generate_key_pair` wrote the two halves, and the new key's id."""

    private: Path
    public: Path
    key_id: str


class TrustedKeys:
    """The public keys a target trusts, looked up by OpenSSF hint or vigil key id."""

    __slots__ = ("_by_hint", "_by_id")

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self._by_id: dict[str, PublicKey] = {}
        self._by_hint: dict[str, PublicKey] = {}
        for key in keys:
            self._by_id[key.key_id] = key
            self._by_hint[key.hint] = key

    def by_hint(self, hint: str) -> PublicKey | None:
        """The trusted key whose PEM hint is `hint`, if any."""
        return self._by_hint.get(hint)

    def by_id(self, key_id: str) -> PublicKey | None:
        """The trusted key whose vigil key id is `key_id`, if any."""
        return self._by_id.get(key_id)

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(sorted(self._by_id.values(), key=lambda k: k.key_id))

    def __len__(self) -> int:
        return len(self._by_id)


def _check_curve(key: ec.EllipticCurvePublicKey, path: str) -> None:
    if not isinstance(key.curve, ec.SECP384R1):
        raise KeyFileError(path, f"curve {key.curve.name} is not P-384 (secp384r1)")


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or type(exc).__name__) from exc
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(str(path), "larger than any PEM key")
    return data


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read one PEM public key; it must be ECDSA P-384."""
    p = Path(path)
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(str(p), "not a PEM public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFileError(str(p), "not an elliptic-curve public key")
    _check_curve(key, str(p))
    return PublicKey.from_key(key, str(p))


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> SigningKey:
    """Read a PEM private key; refused when group or others may read it (as ssh does)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        raise KeyFileError(str(p), exc.strerror or type(exc).__name__) from exc
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(str(p), f"mode {stat.S_IMODE(mode):04o} lets others read it; want 0600")
    data = _read_key_file(p)
    try:
        key = serialization.load_pem_private_key(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(str(p), f"not a usable PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(str(p), "not an elliptic-curve private key")
    _check_curve(key.public_key(), str(p))
    return SigningKey(key=key, public=PublicKey.from_key(key.public_key(), str(p)))


def load_trusted_keys(path: str | os.PathLike[str]) -> TrustedKeys:
    """Load the trusted keys from a directory of `*.pub` files or from one public key file.

    An empty set is an error: a target that trusts nobody can never load a model, and that is
    a configuration mistake to report at start-up, not at the first switch.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.name.endswith(PUBLIC_SUFFIX) and q.is_file())
    elif p.is_file():
        files = [p]
    else:
        raise KeyFileError(str(p), "no such key file or directory")
    keys = [load_public_key(f) for f in files]
    if not keys:
        raise KeyFileError(str(p), f"holds no trusted public key (*{PUBLIC_SUFFIX})")
    return TrustedKeys(keys)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation so no reader sees it open.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError as exc:
        raise KeyFileError(str(path), "already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or type(exc).__name__) from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def generate_key_pair(
    out_dir: str | os.PathLike[str], name: str = "vigil", password: bytes | None = None
) -> KeyPairPaths:
    """Create a P-384 pair: `NAME.key` (PKCS#8 PEM, mode 0600) and `NAME.pub` (PEM)."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(name, "a key name is a plain file name")
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP384R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    if public_path.exists():
        raise KeyFileError(str(public_path), "already exists; refusing to overwrite a key")
    _write_new(private_path, private_pem, 0o600)
    _write_new(public_path, public_pem, 0o644)
    return KeyPairPaths(
        private=private_path, public=public_path, key_id=key_id(private.public_key())
    )
