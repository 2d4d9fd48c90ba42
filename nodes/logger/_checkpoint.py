"""Signed checkpoints of the log store: C2SP tlog-checkpoint notes over the chain head.

A checkpoint says "store S held entries up to N, whose chain value is R, and its history starts
at seq T". Its text is a C2SP `tlog-checkpoint` body (origin, size, root hash in base64, then
an extension line), signed as a C2SP `signed-note` with Ed25519:

    vigil.log/<store id, 32 hex digits>
    <N>
    <base64 of the chain value of entry N>
    start <T>

    — <key name> <base64 of 4-byte key hash || 64-byte signature>

The root is the head of the store's hash chain, not a Merkle root: the chain already commits
to every entry and its order, so signing its head costs one signature per commit group and
nothing per entry (`docs/log-store.md` says why a Merkle tree was not chosen). The key hash is
the signed-note one: SHA-256(name || "\\n" || 0x01 || public key)[:4].
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from vigil.errors import VigilError

__all__ = [
    "KEY_NAME",
    "Checkpoint",
    "CheckpointError",
    "LogKeyError",
    "NoteSignature",
    "Signer",
    "Verifier",
    "generate_key",
    "load_signer",
    "load_verifier",
    "note",
    "parse_note",
]

# The signer name in every note this store signs.
KEY_NAME: Final = "vigil-log"
_ORIGIN: Final = "vigil.log/"
_DASH: Final = "\u2014"  # signed-note signature lines start with an em dash and a space
_ED25519: Final = b"\x01"


class CheckpointError(VigilError):
    """A checkpoint note is malformed (not a vigil store checkpoint); says why."""


class LogKeyError(VigilError):
    """A signing or verification key cannot be read; names the file and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """What a checkpoint states: the store, its size (last seq), the chain head and the start."""

    store_id: bytes
    size: int
    root: bytes
    start: int

    def body(self) -> bytes:
        """The note body that is signed (C2SP tlog-checkpoint with one extension line)."""
        root = base64.b64encode(self.root).decode()
        return f"{_ORIGIN}{self.store_id.hex()}\n{self.size}\n{root}\nstart {self.start}\n".encode()


class NoteSignature(msgspec.Struct, frozen=True):
    """One signature line of a note."""

    name: str
    key_id: bytes
    signature: bytes


def _key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


class Signer:
    """An Ed25519 signing key for checkpoints."""

    def __init__(self, key: Ed25519PrivateKey, name: str = KEY_NAME) -> None:
        self._key = key
        self.name = name
        self.public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = _key_id(name, self.public)

    def sign(self, checkpoint: Checkpoint) -> bytes:
        """The 64-byte signature of the checkpoint's note body."""
        return self._key.sign(checkpoint.body())

    def verifier(self) -> Verifier:
        """The matching verifier."""
        return Verifier(self._key.public_key(), self.name)


class Verifier:
    """An Ed25519 public key that checks checkpoint signatures."""

    def __init__(self, key: Ed25519PublicKey, name: str = KEY_NAME) -> None:
        self._key = key
        self.name = name
        self.public = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = _key_id(name, self.public)

    def verify(self, checkpoint: Checkpoint, key_id: bytes, signature: bytes) -> bool:
        """True when `signature` is this key's signature of the checkpoint."""
        if key_id != self.key_id or len(signature) != 64:
            return False
        try:
            self._key.verify(signature, checkpoint.body())
        except InvalidSignature:
            return False
        return True


def note(checkpoint: Checkpoint, signatures: list[NoteSignature]) -> bytes:
    """The signed note: body, blank line, one signature line per signature."""
    lines = [
        f"{_DASH} {s.name} {base64.b64encode(s.key_id + s.signature).decode()}\n"
        for s in signatures
    ]
    return checkpoint.body() + b"\n" + "".join(lines).encode()


def parse_note(text: bytes) -> tuple[Checkpoint, list[NoteSignature]]:
    """The checkpoint and signatures of a note; CheckpointError when it is not one of ours."""
    try:
        decoded = text.decode()
    except UnicodeDecodeError as exc:
        raise CheckpointError("a checkpoint note is UTF-8 text") from exc
    body, sep, sigs = decoded.partition("\n\n")
    if not sep:
        raise CheckpointError("no blank line between the checkpoint and its signatures")
    lines = body.split("\n")
    if len(lines) != 4 or not lines[0].startswith(_ORIGIN) or not lines[3].startswith("start "):
        raise CheckpointError("not a vigil log checkpoint (origin, size, root, start)")
    try:
        store_id = bytes.fromhex(lines[0][len(_ORIGIN) :])
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
        start = int(lines[3][len("start ") :])
    except ValueError as exc:
        raise CheckpointError(f"malformed checkpoint field: {exc}") from exc
    if len(store_id) != 16 or len(root) != 32 or size < 0 or start < 0:
        raise CheckpointError("checkpoint fields out of range")
    signatures: list[NoteSignature] = []
    for line in sigs.split("\n"):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH:
            raise CheckpointError(f"malformed signature line {line!r}")
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except ValueError as exc:
            raise CheckpointError("malformed signature") from exc
        if len(raw) < 5:
            raise CheckpointError("signature too short")
        signatures.append(NoteSignature(parts[1], raw[:4], raw[4:]))
    checkpoint = Checkpoint(store_id=store_id, size=size, root=root, start=start)
    return checkpoint, signatures


def generate_key(private_path: Path, public_path: Path) -> Signer:
    """Write a new Ed25519 key pair (PEM; the private file mode 0600, created exclusively)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    public_path.write_bytes(public_pem)
    return Signer(key)


def load_signer(path: str | os.PathLike[str]) -> Signer:
    """The Ed25519 private key in a PEM file; LogKeyError when it is not one."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise LogKeyError(str(path), f"not a readable PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise LogKeyError(str(path), "the log signing key must be Ed25519")
    return Signer(key)


def load_verifier(path: str | os.PathLike[str]) -> Verifier:
    """The Ed25519 public key in a PEM file (or the public half of a private one)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LogKeyError(str(path), str(exc)) from exc
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise LogKeyError(str(path), "not a PEM public or private key") from exc
        public = private.public_key()
    if not isinstance(public, Ed25519PublicKey):
        raise LogKeyError(str(path), "the log verification key must be Ed25519")
    return Verifier(public)
