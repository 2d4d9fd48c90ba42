"""Sign a model directory and verify it, in the OpenSSF model-signing format (key mode).

The signature file `model.sig` in a version directory is a Sigstore bundle (media type
`application/vnd.dev.sigstore.bundle.v0.3+json`) holding a DSSE envelope. Its payload is an
in-toto v1 statement with predicate type `https://model_signing/signature/v1.0`: one
subject (the directory name and a SHA-256 over every file digest in order) and a predicate
listing each file with its SHA-256 digest. The signature is ECDSA P-384 with SHA-384 over the
DSSE pre-authentication encoding; the bundle names the key only by a hint (SHA-256 of its PEM).
This is the format `model_signing` 1.x writes and reads in key mode, so either tool verifies
the other's signatures.

Verification reads every file exactly once, through a directory descriptor and `O_NOFOLLOW`,
and hands the caller the very bytes it hashed: nothing re-reads a file after the check.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from vigil.errors import VigilError
from vigil.models.keys import PublicKey, SigningKey, TrustedKeys

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "IN_TOTO_PAYLOAD_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "PREDICATE_TYPE",
    "SIGNATURE_FILE",
    "ModelRefused",
    "RefusalReason",
    "SigningError",
    "VerifiedFiles",
    "sign_directory",
    "verify_directory",
]

SIGNATURE_FILE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"

# OpenSSF verifiers always skip git metadata when hashing, so a signed directory must not
# hold any: the signer refuses them rather than sign a manifest others would disagree with.
_GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
_IGNORE_PATHS = [*_GIT_PATHS, SIGNATURE_FILE]
_MAX_SIGNATURE_FILE = 16 * 1024 * 1024
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RefusalReason(enum.StrEnum):
    """Why a model directory was refused; each maps to one check."""

    UNSIGNED = "unsigned"
    """No `model.sig`, or a bundle that carries no signature."""
    BAD_SIGNATURE = "bad_signature"
    """The named trusted key does not verify the signature."""
    UNTRUSTED_KEY = "untrusted_key"
    """The signing key is not among the trusted keys."""
    DIGEST_MISMATCH = "digest_mismatch"
    """A file's SHA-256 differs from the signed one (tampered or truncated)."""
    MISSING_FILE = "missing_file"
    """A signed file, or the directory itself, is absent."""
    EXTRA_FILE = "extra_file"
    """A file the signature does not cover."""
    PATH_ESCAPE = "path_escape"
    """A symlink or a signed name that points outside the version directory."""
    SYMLINK = "symlink"
    """A symlink inside the version directory: vigil never follows one."""
    NOT_REGULAR = "not_regular"
    """A device, FIFO or socket where a file should be."""
    CHANGED_DURING_LOAD = "changed_during_load"
    """A file changed while it was being read."""
    MALFORMED = "malformed"
    """The signature file is not a well-formed bundle of the supported kind."""
    SIGNATURE_MISMATCH = "signature_mismatch"
    """The metadata's inputs/outputs differ from the graph's, or the graph does not parse."""


class ModelRefused(VigilError):
    """A model directory failed verification; nothing in it may be loaded."""

    def __init__(self, reason: RefusalReason, directory: str, detail: str, file: str = "") -> None:
        where = f"{directory}/{file}" if file else directory
        super().__init__(f"model refused ({reason}): {where}: {detail}")
        self.reason = reason
        self.directory = directory
        self.file = file
        self.detail = detail


class SigningError(VigilError):
    """A directory cannot be signed as it stands (a symlink, a special file, git metadata)."""

    def __init__(self, directory: str, reason: str) -> None:
        super().__init__(f"cannot sign {directory}: {reason}")
        self.directory = directory
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedFiles:
    """The bytes of every signed file, exactly as hashed and checked, and who signed them."""

    directory: str
    """The resolved version directory (symlinks above it resolved once)."""
    files: Mapping[str, bytes]
    """Relative POSIX path to content, for every file the signature covers."""
    digests: Mapping[str, str]
    """Relative POSIX path to SHA-256 (hex)."""
    signer: str
    """The vigil key id (SHA-256 of the DER public key) of the trusted key that verified it."""
    root_digest: str
    """The statement subject's SHA-256: one digest naming this exact set of files."""


# The wire structs mirror the Sigstore bundle and in-toto JSON; unknown fields are ignored
# there so a bundle that gains fields (a timestamp, a log entry) still parses.


class _DsseSignature(msgspec.Struct, kw_only=True):
    sig: str
    keyid: str = ""


class _DsseEnvelope(msgspec.Struct, kw_only=True, rename="camel"):
    payload: str
    payload_type: str
    signatures: list[_DsseSignature]


class _PublicKeyIdentifier(msgspec.Struct, kw_only=True):
    hint: str | None = None


class _VerificationMaterial(msgspec.Struct, kw_only=True, rename="camel"):
    public_key: _PublicKeyIdentifier | None = None
    tlog_entries: list[msgspec.Raw] = []


class _Bundle(msgspec.Struct, kw_only=True, rename="camel"):
    media_type: str
    verification_material: _VerificationMaterial
    dsse_envelope: _DsseEnvelope | None = None


class _Subject(msgspec.Struct, kw_only=True):
    name: str
    digest: dict[str, str]


class _Resource(msgspec.Struct, kw_only=True):
    algorithm: str
    name: str
    digest: str


class _Serialization(msgspec.Struct, kw_only=True):
    method: str
    hash_type: str
    allow_symlinks: bool = False
    ignore_paths: list[str] = []


class _Predicate(msgspec.Struct, kw_only=True):
    resources: list[_Resource]
    serialization: _Serialization


class _Statement(
    msgspec.Struct, kw_only=True, rename={"type": "_type", "predicate_type": "predicateType"}
):
    type: str
    subject: list[_Subject]
    predicate_type: str
    predicate: _Predicate


_bundle_decoder = msgspec.json.Decoder(_Bundle)
_statement_decoder = msgspec.json.Decoder(_Statement)
_encoder = msgspec.json.Encoder()


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def _path_key(name: str) -> tuple[str, ...]:
    # OpenSSF orders resources as pathlib does (by component), not by plain string order.
    return PurePosixPath(name).parts


def _root_digest(digests: list[str]) -> str:
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@contextmanager
def _open_dir(path: str, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, _OPEN_DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _open_under(root_fd: int, name: str) -> Iterator[int]:
    """Open `name` below `root_fd` one component at a time, never following a symlink."""
    parts = name.split("/")
    fds: list[int] = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            parent = os.open(part, _OPEN_DIR, dir_fd=parent)
            fds.append(parent)
        fds.append(os.open(parts[-1], _OPEN_FILE, dir_fd=parent))
        yield fds[-1]
    finally:
        for fd in reversed(fds):
            os.close(fd)


class _Walker:
    """Lists a version directory's files through descriptors, refusing links and specials."""

    def __init__(self, root_fd: int, fail: Callable[..., Exception]) -> None:
        self._root_fd = root_fd
        self._fail = fail

    def files(self) -> list[str]:
        found: list[str] = []
        self._walk(self._root_fd, "", found)
        return sorted(found, key=_path_key)

    def _walk(self, dir_fd: int, prefix: str, found: list[str]) -> None:
        with os.scandir(dir_fd) as entries:
            listing = sorted(entries, key=lambda e: e.name)
        for entry in listing:
            name = entry.name
            rel = f"{prefix}{name}"
            if entry.is_symlink():
                target = os.readlink(name, dir_fd=dir_fd)
                inside = os.path.normpath(os.path.join(prefix, target))
                if os.path.isabs(target) or inside == ".." or inside.startswith("../"):
                    raise self._fail(RefusalReason.PATH_ESCAPE, f"symlink to {target!r}", rel)
                raise self._fail(RefusalReason.SYMLINK, f"symlink to {target!r}", rel)
            if entry.is_dir(follow_symlinks=False):
                with _open_dir(name, dir_fd) as sub:
                    self._walk(sub, f"{rel}/", found)
            elif entry.is_file(follow_symlinks=False):
                if rel != SIGNATURE_FILE:
                    found.append(rel)
            else:
                raise self._fail(RefusalReason.NOT_REGULAR, "not a regular file", rel)


def _hash_fd(fd: int) -> str:
    with os.fdopen(os.dup(fd), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sign_directory(directory: str | os.PathLike[str], key: SigningKey) -> Path:
    """Sign every file of a version directory; writes and returns `DIRECTORY/model.sig`.

    The directory must hold only regular files and folders (no symlinks, devices or git
    metadata). An existing `model.sig` is replaced atomically.
    """
    resolved = os.path.realpath(directory)

    def fail(_reason: RefusalReason, detail: str, file: str = "") -> SigningError:
        return SigningError(resolved, f"{file}: {detail}" if file else detail)

    try:
        with _open_dir(resolved) as root_fd:
            names = _Walker(root_fd, fail).files()
            for name in names:
                if name.split("/")[0] in _GIT_PATHS:
                    raise SigningError(resolved, f"{name}: git metadata is never signed")
            resources = []
            for name in names:
                with _open_under(root_fd, name) as fd:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise SigningError(resolved, f"{name}: not a regular file")
                    resources.append(_Resource(algorithm="sha256", name=name, digest=_hash_fd(fd)))
    except OSError as exc:
        raise SigningError(resolved, exc.strerror or type(exc).__name__) from exc
    statement = _Statement(
        type=IN_TOTO_STATEMENT_TYPE,
        subject=[
            _Subject(
                name=os.path.basename(resolved),
                digest={"sha256": _root_digest([r.digest for r in resources])},
            )
        ],
        predicate_type=PREDICATE_TYPE,
        predicate=_Predicate(
            resources=resources,
            serialization=_Serialization(
                method="files",
                hash_type="sha256",
                allow_symlinks=False,
                ignore_paths=list(_IGNORE_PATHS),
            ),
        ),
    )
    payload = _encoder.encode(statement)
    signature = key.key.sign(_pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA384()))
    bundle = _Bundle(
        media_type=BUNDLE_MEDIA_TYPE,
        verification_material=_VerificationMaterial(
            public_key=_PublicKeyIdentifier(hint=key.public.hint), tlog_entries=[]
        ),
        dsse_envelope=_DsseEnvelope(
            payload=base64.b64encode(payload).decode(),
            payload_type=IN_TOTO_PAYLOAD_TYPE,
            signatures=[
                _DsseSignature(sig=base64.b64encode(signature).decode(), keyid=key.public.key_id)
            ],
        ),
    )
    target = Path(resolved) / SIGNATURE_FILE
    _write_atomic(target, _encoder.encode(bundle))
    return target


def _write_atomic(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SigningError(str(target.parent), f"writing {target.name}: {exc}") from exc


class _Verifier:
    """One verification of one directory; carries the directory for error messages."""

    def __init__(self, directory: str, trusted: TrustedKeys) -> None:
        self.directory = directory
        self.trusted = trusted

    def fail(self, reason: RefusalReason, detail: str, file: str = "") -> ModelRefused:
        return ModelRefused(reason, self.directory, detail, file)

    def read_signature(self, root_fd: int) -> bytes:
        try:
            fd = os.open(SIGNATURE_FILE, _OPEN_FILE, dir_fd=root_fd)
        except FileNotFoundError as exc:
            raise self.fail(RefusalReason.UNSIGNED, f"no {SIGNATURE_FILE}") from exc
        except OSError as exc:
            raise self.fail(
                RefusalReason.MALFORMED, f"cannot open: {exc.strerror}", SIGNATURE_FILE
            ) from exc
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise self.fail(RefusalReason.NOT_REGULAR, "not a regular file", SIGNATURE_FILE)
            data = f.read(_MAX_SIGNATURE_FILE + 1)
        if len(data) > _MAX_SIGNATURE_FILE:
            raise self.fail(RefusalReason.MALFORMED, "larger than any signature", SIGNATURE_FILE)
        return data

    def _b64(self, text: str, what: str) -> bytes:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self.fail(
                RefusalReason.MALFORMED, f"{what} is not base64", SIGNATURE_FILE
            ) from exc

    def check_signature(self, raw: bytes) -> tuple[bytes, PublicKey]:
        """The signed payload and the trusted key that verified it."""
        try:
            bundle = _bundle_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise self.fail(
                RefusalReason.MALFORMED, f"not a bundle: {exc}", SIGNATURE_FILE
            ) from exc
        if bundle.media_type != BUNDLE_MEDIA_TYPE:
            raise self.fail(
                RefusalReason.MALFORMED, f"media type {bundle.media_type!r}", SIGNATURE_FILE
            )
        envelope = bundle.dsse_envelope
        if envelope is None:
            raise self.fail(RefusalReason.MALFORMED, "no DSSE envelope", SIGNATURE_FILE)
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE:
            raise self.fail(
                RefusalReason.MALFORMED, f"payload type {envelope.payload_type!r}", SIGNATURE_FILE
            )
        if not envelope.signatures:
            raise self.fail(RefusalReason.UNSIGNED, "the bundle holds no signature", SIGNATURE_FILE)
        payload = self._b64(envelope.payload, "payload")
        signatures = [self._b64(s.sig, "signature") for s in envelope.signatures]
        material = bundle.verification_material.public_key
        hint = material.hint if material is not None else None
        if hint:
            named = self.trusted.by_hint(hint)
            if named is None:
                raise self.fail(
                    RefusalReason.UNTRUSTED_KEY,
                    f"signed by key with hint {hint}, which is not trusted",
                    SIGNATURE_FILE,
                )
            candidates = [named]
        else:
            # An older bundle names no key: any trusted key may have signed it.
            candidates = list(self.trusted)
        message = _pae(envelope.payload_type, payload)
        for key in candidates:
            for signature in signatures:
                try:
                    key.key.verify(signature, message, ec.ECDSA(hashes.SHA384()))
                except InvalidSignature:
                    continue
                return payload, key
        if hint:
            raise self.fail(
                RefusalReason.BAD_SIGNATURE,
                f"signature does not verify under trusted key {candidates[0].key_id}",
                SIGNATURE_FILE,
            )
        raise self.fail(
            RefusalReason.UNTRUSTED_KEY, "no trusted key verifies the signature", SIGNATURE_FILE
        )

    def check_name(self, name: str) -> None:
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise self.fail(RefusalReason.PATH_ESCAPE, f"signed name {name!r} leaves the directory")
        if any(p in ("", ".") for p in parts) or "\0" in name or name == SIGNATURE_FILE:
            raise self.fail(RefusalReason.MALFORMED, f"signed name {name!r}", SIGNATURE_FILE)

    def manifest(self, payload: bytes) -> tuple[dict[str, str], str]:
        """The signed file digests by name, and the subject digest."""
        try:
            statement = _statement_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise self.fail(
                RefusalReason.MALFORMED, f"not an in-toto statement: {exc}", SIGNATURE_FILE
            ) from exc
        if statement.type != IN_TOTO_STATEMENT_TYPE:
            raise self.fail(
                RefusalReason.MALFORMED, f"statement {statement.type!r}", SIGNATURE_FILE
            )
        if statement.predicate_type != PREDICATE_TYPE:
            raise self.fail(
                RefusalReason.MALFORMED,
                f"predicate type {statement.predicate_type!r}",
                SIGNATURE_FILE,
            )
        serialization = statement.predicate.serialization
        if serialization.method != "files" or serialization.hash_type != "sha256":
            raise self.fail(
                RefusalReason.MALFORMED,
                f"serialization {serialization.method}/{serialization.hash_type};"
                " vigil verifies files/sha256",
                SIGNATURE_FILE,
            )
        if len(statement.subject) != 1:
            raise self.fail(RefusalReason.MALFORMED, "expected one subject", SIGNATURE_FILE)
        digests: dict[str, str] = {}
        for resource in statement.predicate.resources:
            self.check_name(resource.name)
            digest = resource.digest.lower()
            if (
                resource.algorithm != "sha256"
                or len(digest) != 64
                or not all(c in "0123456789abcdef" for c in digest)
            ):
                raise self.fail(RefusalReason.MALFORMED, "bad digest", resource.name)
            if resource.name in digests:
                raise self.fail(RefusalReason.MALFORMED, "listed twice", resource.name)
            digests[resource.name] = digest
        root = _root_digest([r.digest for r in statement.predicate.resources])
        if statement.subject[0].digest.get("sha256", "").lower() != root:
            raise self.fail(
                RefusalReason.MALFORMED,
                "subject digest does not match the listed files",
                SIGNATURE_FILE,
            )
        return digests, root

    def read_file(self, root_fd: int, name: str) -> tuple[bytes, tuple[int, int, int, int, int]]:
        try:
            with _open_under(root_fd, name) as fd:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    raise self.fail(RefusalReason.NOT_REGULAR, "not a regular file", name)
                with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                    data = f.readall()
                after = os.fstat(fd)
        except FileNotFoundError as exc:
            raise self.fail(RefusalReason.CHANGED_DURING_LOAD, "vanished", name) from exc
        except OSError as exc:
            # ELOOP: a file became a symlink after the listing.
            raise self.fail(RefusalReason.CHANGED_DURING_LOAD, str(exc.strerror), name) from exc
        if _identity(before) != _identity(after) or len(data) != after.st_size:
            raise self.fail(RefusalReason.CHANGED_DURING_LOAD, "changed while read", name)
        return data, _identity(after)

    def still_same(self, root_fd: int, name: str, seen: tuple[int, int, int, int, int]) -> None:
        try:
            with _open_under(root_fd, name) as fd:
                now = _identity(os.fstat(fd))
        except OSError as exc:
            raise self.fail(RefusalReason.CHANGED_DURING_LOAD, str(exc.strerror), name) from exc
        if now != seen:
            raise self.fail(RefusalReason.CHANGED_DURING_LOAD, "replaced or modified", name)


@contextmanager
def _open_version_dir(v: _Verifier) -> Iterator[int]:
    try:
        fd = os.open(v.directory, _OPEN_DIR)
    except FileNotFoundError as exc:
        raise v.fail(RefusalReason.MISSING_FILE, "no such directory") from exc
    except OSError as exc:
        raise v.fail(RefusalReason.MISSING_FILE, f"not a directory: {exc.strerror}") from exc
    try:
        yield fd
    finally:
        os.close(fd)


# implements: SR-MDL-001
def verify_directory(
    directory: str | os.PathLike[str],
    trusted: TrustedKeys,
    *,
    on_file_read: Callable[[str, int], None] | None = None,
) -> VerifiedFiles:
    """Verify a version directory against the trusted keys; return the verified bytes.

    The path is resolved once (`os.path.realpath`); everything after goes through one open
    directory descriptor. The signature is checked before any model file is read. Each signed
    file is read once, hashed, and compared with its signed digest; every file present must be
    signed and every signed file present. `on_file_read(name, size)` is called after each file
    is read (progress reporting). Raises `ModelRefused` with the reason of the first failure.
    """
    resolved = os.path.realpath(directory)
    v = _Verifier(resolved, trusted)
    with _open_version_dir(v) as root_fd:
        payload, signer = v.check_signature(v.read_signature(root_fd))
        digests, root = v.manifest(payload)
        try:
            present = _Walker(root_fd, v.fail).files()
        except OSError as exc:
            raise v.fail(RefusalReason.MALFORMED, f"cannot list: {exc.strerror}") from exc
        missing = sorted(set(digests) - set(present), key=_path_key)
        if missing:
            raise v.fail(RefusalReason.MISSING_FILE, "signed but absent", missing[0])
        extra = sorted(set(present) - set(digests), key=_path_key)
        if extra:
            raise v.fail(RefusalReason.EXTRA_FILE, "present but not signed", extra[0])
        files: dict[str, bytes] = {}
        seen: dict[str, tuple[int, int, int, int, int]] = {}
        for name in sorted(digests, key=_path_key):
            data, seen[name] = v.read_file(root_fd, name)
            actual = hashlib.sha256(data).hexdigest()
            if actual != digests[name]:
                raise v.fail(
                    RefusalReason.DIGEST_MISMATCH,
                    f"sha256 {actual} ({len(data)} bytes), signed {digests[name]}",
                    name,
                )
            files[name] = data
            if on_file_read is not None:
                on_file_read(name, len(data))
        # A file swapped or rewritten after its read does not alter the bytes returned, but
        # it means someone is writing to a model being loaded: refuse and say so.
        for name, identity in seen.items():
            v.still_same(root_fd, name, identity)
    return VerifiedFiles(
        directory=resolved,
        files=MappingProxyType(files),
        digests=MappingProxyType(digests),
        signer=signer.key_id,
        root_digest=root,
    )
