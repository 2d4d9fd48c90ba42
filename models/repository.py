"""The model repository: its layout, the active version, and verified loading of a version.

```
REPO/
  <name>/
    latest -> 3            relative symlink naming the active version (or set it in config)
    3/
      model.onnx           the graph (and any external-data files beside it)
      metadata.json        ModelMetadata: signature of inputs/outputs, creation time, KAT
      kat-inputs.npz       optional known-answer test vector: one array per input
      kat-expected.npz     and one per output
      model.sig            OpenSSF model-signing bundle over every other file
```

Nothing here returns a path for someone else to open: `load_verified` returns the bytes it
verified, so no file is read twice.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from vigil.errors import VigilError
from vigil.models.keys import SigningKey, TrustedKeys
from vigil.models.signing import (
    SIGNATURE_FILE,
    ModelRefused,
    RefusalReason,
    sign_directory,
    verify_directory,
)
from vigil.schemas import Config

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "LATEST_LINK",
    "METADATA_FILE",
    "PACKAGE_PREFIX",
    "KnownAnswer",
    "KnownAnswerVector",
    "ModelEntry",
    "ModelMetadata",
    "RepositoryConfig",
    "RepositoryError",
    "TensorSpec",
    "VerifiedModel",
    "VersionEntry",
    "external_data_files",
    "list_models",
    "load_active",
    "load_verified",
    "metadata_from_onnx",
    "model_file_path",
    "read_known_answer",
    "resolve_version",
    "set_latest",
    "write_metadata",
    "write_version",
]

LATEST_LINK = "latest"
METADATA_FILE = "metadata.json"
PACKAGE_PREFIX = "package:"
"""Names a file inside an installed package: `package:<module>/<path inside it>`."""
METADATA_FORMAT = 1

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DTYPES = frozenset(
    {
        "bool",
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
    }
)

Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
RelPath = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class RepositoryError(VigilError):
    """The repository layout is wrong: no such model, no active version, a bad name."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class TensorSpec(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One graph input or output: its name, element type and shape (a str is a named dim)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    dtype: str
    shape: list[Annotated[int, msgspec.Meta(ge=0)] | str]

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(_DTYPES)}")


class KnownAnswer(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A known-answer test vector: two `.npz` files in the version directory, both signed."""

    inputs: RelPath
    """One array per graph input, keyed by input name."""
    expected: RelPath
    """One array per checked output, keyed by output name."""
    rtol: Annotated[float, msgspec.Meta(ge=0.0)] = 1e-5
    atol: Annotated[float, msgspec.Meta(ge=0.0)] = 1e-6


class ModelMetadata(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`metadata.json`: what a version directory holds and how to check it."""

    format: Annotated[int, msgspec.Meta(ge=1, le=METADATA_FORMAT)] = METADATA_FORMAT
    model_file: RelPath = "model.onnx"
    inputs: Annotated[list[TensorSpec], msgspec.Meta(min_length=1)]
    outputs: Annotated[list[TensorSpec], msgspec.Meta(min_length=1)]
    created: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    known_answer: KnownAnswer | None = None
    description: Annotated[str, msgspec.Meta(max_length=1024)] = ""


class RepositoryConfig(Config, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the models live, which one to serve, and whom to trust (launch-file section)."""

    root: str
    model: Name
    trusted_keys: str
    """A directory of `*.pub` files, or one public key file."""
    version: Name | None = None
    """Pin a version; `None` follows the model's `latest` symlink."""


@dataclass(frozen=True, slots=True)
class VersionEntry:
    """One version directory as listed (the signature is present, not yet verified)."""

    version: str
    path: Path
    has_signature: bool


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model in the repository: its versions and the one `latest` names."""

    name: str
    path: Path
    versions: tuple[VersionEntry, ...]
    active: str | None


@dataclass(frozen=True, slots=True)
class VerifiedModel:
    """A version whose every file was verified; holds the bytes so nothing re-reads them."""

    name: str
    version: str
    directory: str
    files: Mapping[str, bytes]
    metadata: ModelMetadata
    model_sha256: str
    """SHA-256 (hex) of the model file."""
    signer: str
    """Key id of the trusted key that verified the signature."""
    root_digest: str
    """SHA-256 naming the whole signed set of files."""

    @property
    def model_bytes(self) -> bytes:
        """The ONNX bytes to hand to `onnxruntime.InferenceSession`."""
        return self.files[self.metadata.model_file]


@dataclass(frozen=True, slots=True)
class KnownAnswerVector:
    """Decoded known-answer arrays and the tolerance a result must meet."""

    inputs: dict[str, npt.NDArray[Any]]
    expected: dict[str, npt.NDArray[Any]]
    rtol: float
    atol: float

    def mismatches(self, outputs: Mapping[str, npt.NDArray[Any]]) -> list[str]:
        """Names of expected outputs that are absent, misshapen, or out of tolerance."""
        import numpy as np  # noqa: PLC0415 - the loader of a pinned model never gets here

        bad = []
        for name, want in self.expected.items():
            got = outputs.get(name)
            if (
                got is None
                or got.shape != want.shape
                or not np.allclose(got, want, rtol=self.rtol, atol=self.atol)
            ):
                bad.append(name)
        return bad


def _check_name(path: str, value: str, what: str) -> None:
    if not _NAME.fullmatch(value) or value == LATEST_LINK:
        raise RepositoryError(path, f"{what} {value!r} is not a valid name")


def _version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    # Natural order: 2 before 10, and 1.2 before 1.10.
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p
    )


def _active(model_dir: Path) -> str | None:
    link = model_dir / LATEST_LINK
    if not link.is_symlink():
        return None
    target = Path(os.path.realpath(link))
    if target.parent != Path(os.path.realpath(model_dir)) or not target.is_dir():
        return None
    return target.name


def list_models(root: str | os.PathLike[str]) -> list[ModelEntry]:
    """Every model under `root` with its versions (natural order) and its active version."""
    base = Path(root)
    if not base.is_dir():
        raise RepositoryError(str(base), "no such model repository")
    models = []
    for model_dir in sorted(base.iterdir()):
        if model_dir.is_symlink() or not model_dir.is_dir() or not _NAME.fullmatch(model_dir.name):
            continue
        versions = [
            VersionEntry(
                version=d.name,
                path=d,
                has_signature=(d / SIGNATURE_FILE).is_file(),
            )
            for d in model_dir.iterdir()
            if d.name != LATEST_LINK
            and not d.is_symlink()
            and d.is_dir()
            and _NAME.fullmatch(d.name)
        ]
        versions.sort(key=lambda v: _version_key(v.version))
        models.append(
            ModelEntry(
                name=model_dir.name,
                path=model_dir,
                versions=tuple(versions),
                active=_active(model_dir),
            )
        )
    return models


def resolve_version(root: str | os.PathLike[str], name: str, version: str | None = None) -> Path:
    """The real path of a model's version directory: the pinned one, or what `latest` names.

    The `latest` link is resolved once, here. It must name a version directory beside it; a
    link that leads anywhere else is refused (`PATH_ESCAPE`), whatever it points at.
    """
    _check_name(str(root), name, "model")
    model_dir = Path(root) / name
    if model_dir.is_symlink() or not model_dir.is_dir():
        raise RepositoryError(str(model_dir), "no such model")
    real_model_dir = os.path.realpath(model_dir)
    if version is not None:
        _check_name(str(model_dir), version, "version")
        candidate = model_dir / version
    else:
        candidate = model_dir / LATEST_LINK
        if not candidate.is_symlink():
            raise RepositoryError(
                str(candidate), "no active version: `latest` is absent or not a symlink"
            )
    resolved = os.path.realpath(candidate)
    if os.path.dirname(resolved) != real_model_dir:
        raise ModelRefused(
            RefusalReason.PATH_ESCAPE,
            str(candidate),
            f"resolves to {resolved}, outside {real_model_dir}",
        )
    if not _NAME.fullmatch(os.path.basename(resolved)):
        raise ModelRefused(
            RefusalReason.PATH_ESCAPE, str(candidate), f"resolves to {resolved}: not a version"
        )
    return Path(resolved)


def _decode_metadata(directory: str, files: Mapping[str, bytes]) -> ModelMetadata:
    raw = files.get(METADATA_FILE)
    if raw is None:
        raise ModelRefused(RefusalReason.MALFORMED, directory, "signed, but no metadata file")
    try:
        metadata = msgspec.json.decode(raw, type=ModelMetadata)
    except msgspec.ValidationError as exc:
        raise ModelRefused(RefusalReason.MALFORMED, directory, str(exc), METADATA_FILE) from exc
    except msgspec.DecodeError as exc:
        raise ModelRefused(
            RefusalReason.MALFORMED, directory, f"not JSON: {exc}", METADATA_FILE
        ) from exc
    named = [metadata.model_file]
    if metadata.known_answer is not None:
        named += [metadata.known_answer.inputs, metadata.known_answer.expected]
    for file in named:
        if file not in files:
            raise ModelRefused(
                RefusalReason.MALFORMED,
                directory,
                f"names {file!r}, which is not signed",
                METADATA_FILE,
            )
    return metadata


# implements: SR-MDL-001
def _check_graph_signature(directory: str, metadata: ModelMetadata, model: bytes) -> None:
    """Refuse a version whose signed metadata does not describe its own graph.

    Clients, the known-answer test and the worker's batching all trust the metadata's
    inputs and outputs; a version whose graph says otherwise would fail on its first request
    or, worse, answer with tensors the caller misreads.
    """
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - comes with onnx

    try:
        graph = metadata_from_onnx(model, created=metadata.created)
    except (DecodeError, ValueError, KeyError, TypeError) as exc:
        raise ModelRefused(
            RefusalReason.SIGNATURE_MISMATCH,
            directory,
            f"not an ONNX graph: {exc}"[:512],
            metadata.model_file,
        ) from exc
    for kind, declared, actual in (
        ("inputs", metadata.inputs, graph.inputs),
        ("outputs", metadata.outputs, graph.outputs),
    ):
        if declared != actual:
            raise ModelRefused(
                RefusalReason.SIGNATURE_MISMATCH,
                directory,
                f"{kind} {_describe(declared)} in the metadata, {_describe(actual)} in the graph",
                METADATA_FILE,
            )


def _describe(specs: list[TensorSpec]) -> str:
    return "[" + ", ".join(f"{t.name}:{t.dtype}{t.shape}" for t in specs) + "]"


def load_verified(
    directory: str | os.PathLike[str],
    trusted: TrustedKeys,
    *,
    on_file_read: Callable[[str, int], None] | None = None,
) -> VerifiedModel:
    """Verify a version directory and return its bytes with the decoded metadata.

    Raises `ModelRefused` for any failure: signature, digests, layout, or metadata.
    """
    verified = verify_directory(directory, trusted, on_file_read=on_file_read)
    metadata = _decode_metadata(verified.directory, verified.files)
    _check_graph_signature(verified.directory, metadata, verified.files[metadata.model_file])
    resolved = Path(verified.directory)
    return VerifiedModel(
        name=resolved.parent.name,
        version=resolved.name,
        directory=verified.directory,
        files=verified.files,
        metadata=metadata,
        model_sha256=verified.digests[metadata.model_file],
        signer=verified.signer,
        root_digest=verified.root_digest,
    )


def load_active(
    root: str | os.PathLike[str],
    name: str,
    trusted: TrustedKeys,
    version: str | None = None,
) -> VerifiedModel:
    """Resolve a model's active (or pinned) version once, then verify and load it."""
    resolved = resolve_version(root, name, version)
    model = load_verified(resolved, trusted)
    if model.directory != str(resolved):
        # The directory became a symlink between resolution and verification.
        raise ModelRefused(
            RefusalReason.CHANGED_DURING_LOAD,
            str(resolved),
            f"now resolves to {model.directory}",
        )
    return model


def read_known_answer(model: VerifiedModel) -> KnownAnswerVector | None:
    """The model's known-answer vector, decoded from its verified bytes (no pickles)."""
    kat = model.metadata.known_answer
    if kat is None:
        return None

    import numpy as np  # noqa: PLC0415 - the loader of a pinned model never gets here

    def arrays(file: str) -> dict[str, npt.NDArray[Any]]:
        try:
            with np.load(io.BytesIO(model.files[file]), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as exc:
            raise ModelRefused(
                RefusalReason.MALFORMED, model.directory, f"not an .npz: {exc}", file
            ) from exc

    return KnownAnswerVector(
        inputs=arrays(kat.inputs), expected=arrays(kat.expected), rtol=kat.rtol, atol=kat.atol
    )


def metadata_from_onnx(
    onnx_bytes: bytes,
    *,
    created: dt.datetime,
    model_file: str = "model.onnx",
    known_answer: KnownAnswer | None = None,
    description: str = "",
) -> ModelMetadata:
    """Metadata whose input/output signature is read from the ONNX graph itself."""
    import numpy as np  # noqa: PLC0415
    import onnx  # noqa: PLC0415 - a heavy import only packaging and verification need
    from onnx import helper  # noqa: PLC0415

    graph = onnx.load_model_from_string(onnx_bytes).graph
    initializers = {init.name for init in graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value") else d.dim_value
            for d in tensor.shape.dim
        ]
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        return TensorSpec(name=value.name, dtype=dtype, shape=shape)

    return ModelMetadata(
        model_file=model_file,
        inputs=[spec(v) for v in graph.input if v.name not in initializers],
        outputs=[spec(v) for v in graph.output],
        created=created,
        known_answer=known_answer,
        description=description,
    )


def model_file_path(path: str, base: str | os.PathLike[str] = ".") -> Path:
    """A model file named by a path (relative ones from `base`) or by `package:<module>/<path>`,
    a file inside an installed wheel; raises FileNotFoundError for a package not installed."""
    if path.startswith(PACKAGE_PREFIX):
        package, _, inside = path[len(PACKAGE_PREFIX) :].partition("/")
        # Located, never imported: importing the package would run its code (and pull the
        # inference engine into a process that must stay free of it).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"no installed package {package!r}")
        return Path(next(iter(spec.submodule_search_locations))) / inside
    p = Path(path)
    return p if p.is_absolute() else Path(base) / p


def external_data_files(onnx_bytes: bytes) -> list[str]:
    """The files beside the graph that hold its external-data tensors, as relative paths.

    Raises ValueError for a graph that is not ONNX, or names a file outside its folder.
    """
    import onnx  # noqa: PLC0415 - a heavy import only packaging and verification need
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - comes with onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data  # noqa: PLC0415

    try:
        graph = onnx.load_model_from_string(onnx_bytes).graph
    except DecodeError as exc:
        raise ValueError(f"not an ONNX graph: {exc}") from exc
    files: set[str] = set()
    for tensor in graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            parts = Path(location).parts
            if not parts or Path(location).is_absolute() or ".." in parts:
                raise ValueError(f"external data {location!r} lies outside the graph's folder")
            files.add(Path(location).as_posix())
    return sorted(files)


def write_version(
    root: str | os.PathLike[str],
    name: str,
    version: str,
    model: bytes,
    *,
    files: Mapping[str, bytes] | None = None,
    known_answer: KnownAnswer | None = None,
    description: str = "",
    key: SigningKey | None = None,
) -> Path:
    """Create version `version` of model `name` under `root`: the graph as `model.onnx`,
    `files` beside it (external data, known-answer vectors), the `metadata.json` the graph
    describes, and with `key` its signature.

    The folder is built aside and renamed into place whole, so a loader watching the
    repository never sees a version half written or not yet signed. Raises RepositoryError
    for a bad name, a version that exists (versions are immutable once signed) or a graph the
    ONNX checker refuses; SigningError when signing fails.
    """
    _check_name(str(root), name, "model")
    _check_name(str(root), version, "version")
    model_dir = Path(root) / name
    folder = model_dir / version
    if folder.exists() or folder.is_symlink():
        raise RepositoryError(str(folder), "this version exists; add a new one")
    model_dir.mkdir(parents=True, exist_ok=True)
    # The staged folder has the version's own name: the signature names its folder.
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=model_dir) as staging:
        staged = Path(staging) / version
        staged.mkdir()
        (staged / "model.onnx").write_bytes(model)
        for relative, data in (files or {}).items():
            path = staged / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            metadata = _checked_metadata(
                staged / "model.onnx", known_answer=known_answer, description=description
            )
        except ValueError as exc:
            raise RepositoryError(str(folder), str(exc)) from exc
        write_metadata(staged, metadata)
        if key is not None:
            sign_directory(staged, key)
        try:
            # A version that appeared meanwhile with files in it makes this fail; an empty
            # folder is replaced, which loses nothing.
            os.rename(staged, folder)
        except OSError as exc:
            raise RepositoryError(str(folder), f"cannot add it: {exc.strerror}") from exc
    return folder


def _checked_metadata(
    model_path: Path, *, known_answer: KnownAnswer | None, description: str
) -> ModelMetadata:
    """The metadata of a graph the ONNX checker accepts; ValueError naming what is wrong."""
    import onnx  # noqa: PLC0415 - a heavy import only packaging and verification need
    from google.protobuf.message import DecodeError  # noqa: PLC0415 - comes with onnx

    try:
        # By path, so that external data is looked for beside the graph.
        onnx.checker.check_model(str(model_path))
        metadata = metadata_from_onnx(
            model_path.read_bytes(),
            created=dt.datetime.now(dt.UTC),
            known_answer=known_answer,
            description=description,
        )
    except (DecodeError, onnx.checker.ValidationError, KeyError, TypeError) as exc:
        raise ValueError(f"not a valid ONNX graph: {exc}"[:512]) from exc
    if not metadata.inputs or not metadata.outputs:
        raise ValueError("the graph declares no inputs or no outputs")
    return metadata


def write_metadata(directory: str | os.PathLike[str], metadata: ModelMetadata) -> Path:
    """Write `metadata.json` into a version directory (before signing it)."""
    path = Path(directory) / METADATA_FILE
    with path.open("wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(metadata), indent=2) + b"\n")
    return path


def set_latest(root: str | os.PathLike[str], name: str, version: str) -> None:
    """Point a model's `latest` at one of its versions, atomically (rename over the link)."""
    _check_name(str(root), name, "model")
    _check_name(str(root), version, "version")
    model_dir = Path(root) / name
    target = model_dir / version
    if target.is_symlink() or not target.is_dir():
        raise RepositoryError(str(target), "no such version directory")
    tmp = model_dir / f".{LATEST_LINK}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(version, tmp)
    os.replace(tmp, model_dir / LATEST_LINK)
