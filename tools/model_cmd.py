"""`vigil model`: add model versions, make signing keys, sign and verify versions, list a
repository, and ask a running launch what it serves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import msgspec
import zmq

from vigil.bus.curve import CurveConfig
from vigil.bus.pubsub import Subscriber
from vigil.models.keys import (
    KeyFileError,
    generate_key_pair,
    load_private_key,
    load_trusted_keys,
)
from vigil.models.repository import (
    METADATA_FILE,
    ModelMetadata,
    RepositoryError,
    TensorSpec,
    external_data_files,
    list_models,
    load_verified,
    model_file_path,
    set_latest,
    write_version,
)
from vigil.models.signing import SIGNATURE_FILE, ModelRefused, SigningError, sign_directory
from vigil.schemas import Heartbeat, ModelAnnouncement, Topic
from vigil.tools._options import json_option, key_option, run_dir_option, signing_key_option
from vigil.tools._taps import open_bus, open_run

__all__ = ["format_status", "model"]


@click.group()
def model() -> None:
    """Signed model repository: add versions, keys, signatures, status."""


@model.command()
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for NAME.key (private, mode 0600) and NAME.pub.",
)
@click.option("--name", default="vigil", show_default=True, help="Base name of the key files.")
def keygen(out_dir: Path, name: str) -> None:
    """Create an ECDSA P-384 signing key pair."""
    try:
        pair = generate_key_pair(out_dir, name)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"private key  {pair.private}  (keep it off the target)")
    click.echo(f"public key   {pair.public}  (copy it into the target's trusted key directory)")
    click.echo(f"key id       {pair.key_id}")


def _specs(specs: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.dtype}[{', '.join(str(d) for d in t.shape)}]" for t in specs)


@model.command()
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("version")
@click.argument("model_file", metavar="MODEL.onnx")
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sign the new version with this private key (from `vigil model keygen`).",
)
@click.option("--activate", is_flag=True, help="Point NAME's `latest` at the new version.")
@click.option("--description", default="", help="A line for metadata.json.")
def add(  # noqa: PLR0917 - click passes every option as an argument
    repo: Path,
    name: str,
    version: str,
    model_file: str,
    sign_key: Path | None,
    activate: bool,
    description: str,
) -> None:
    """Add MODEL.onnx to REPO as version VERSION of model NAME, described by its graph.

    Writes REPO/NAME/VERSION with the graph, its external-data files and the metadata.json
    read from the graph (inputs, outputs, time); --sign signs the folder. MODEL.onnx may be
    `package:<module>/<path>`, a file inside an installed wheel, as in a launch file.
    """
    try:
        source = model_file_path(model_file)
        graph = source.read_bytes()
        external = {f: (source.parent / f).read_bytes() for f in external_data_files(graph)}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{model_file}: {exc}") from exc
    try:
        key = load_private_key(sign_key) if sign_key is not None else None
        folder = write_version(
            repo, name, version, graph, files=external, description=description, key=key
        )
        metadata = msgspec.json.decode((folder / METADATA_FILE).read_bytes(), type=ModelMetadata)
        click.echo(f"added {name}/{version} at {folder}")
        click.echo(f"  inputs   {_specs(metadata.inputs)}")
        click.echo(f"  outputs  {_specs(metadata.outputs)}")
        if key is not None:
            click.echo(f"  signed   {folder / SIGNATURE_FILE} with key {key.public.key_id}")
        if activate:
            set_latest(repo, name, version)
            click.echo(f"  active   {name}: latest -> {version}")
    except (KeyFileError, RepositoryError, SigningError) as exc:
        raise click.ClickException(str(exc)) from exc


def _check_metadata(directory: Path) -> None:
    path = directory / METADATA_FILE
    try:
        metadata = msgspec.json.decode(path.read_bytes(), type=ModelMetadata)
    except FileNotFoundError as exc:
        raise click.ClickException(f"{path}: missing (see docs/model-repository.md)") from exc
    except (msgspec.DecodeError, OSError) as exc:
        raise click.ClickException(f"{path}: {exc}") from exc
    named = [metadata.model_file]
    if metadata.known_answer is not None:
        named += [metadata.known_answer.inputs, metadata.known_answer.expected]
    for file in named:
        if not (directory / file).is_file():
            raise click.ClickException(f"{path}: names {file!r}, which is not in {directory}")


@model.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@signing_key_option
@click.option(
    "--check-metadata/--no-check-metadata",
    default=True,
    show_default=True,
    help="Refuse a directory whose metadata.json the loader would refuse.",
)
def sign(directory: Path, key_path: Path, check_metadata: bool) -> None:
    """Sign every file of a model version DIRECTORY into DIRECTORY/model.sig."""
    if check_metadata:
        _check_metadata(directory)
    try:
        key = load_private_key(key_path)
        signature = sign_directory(directory, key)
    except (KeyFileError, SigningError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"signed {signature} with key {key.public.key_id}")


@model.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--trusted",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Trusted key directory (*.pub) or one public key file.",
)
def verify(directory: Path, trusted: Path) -> None:
    """Verify a model version DIRECTORY as the loader would; exit 1 naming what failed."""
    try:
        model_version = load_verified(directory, load_trusted_keys(trusted))
    except ModelRefused as exc:
        raise click.ClickException(
            f"REFUSED {exc.reason.name}: {exc.directory}"
            + (f"/{exc.file}" if exc.file else "")
            + f": {exc.detail}"
        ) from exc
    except KeyFileError as exc:
        raise click.ClickException(f"trusted keys: {exc}") from exc
    click.echo(f"verified {model_version.name}/{model_version.version} ({model_version.directory})")
    click.echo(f"  signer      {model_version.signer}")
    click.echo(
        f"  model       {model_version.metadata.model_file} sha256 {model_version.model_sha256}"
    )
    click.echo(f"  files       {len(model_version.files)}")
    click.echo(f"  root digest {model_version.root_digest}")


@model.command(name="list")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@json_option
def list_cmd(repo: Path, as_json: bool) -> None:
    """List the models in REPO, their versions, and which one is active."""
    try:
        models = list_models(repo)
    except RepositoryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        listing = [
            {
                "name": m.name,
                "active": m.active,
                "versions": [
                    {"version": v.version, "path": str(v.path), "signed": v.has_signature}
                    for v in m.versions
                ],
            }
            for m in models
        ]
        click.echo(json.dumps(listing, indent=2))
        return
    if not models:
        click.echo(f"no models in {repo}")
    for entry in models:
        click.echo(f"{entry.name}  (active: {entry.active or 'none'})")
        for v in entry.versions:
            marks = ["active"] if v.version == entry.active else []
            marks.append("signed" if v.has_signature else "UNSIGNED")
            click.echo(f"  {v.version:<16} {', '.join(marks)}")


@model.command()
@click.argument("repo", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("name")
@click.argument("version")
def activate(repo: Path, name: str, version: str) -> None:
    """Point NAME's `latest` link in REPO at VERSION (atomically; verification is the loader's)."""
    try:
        set_latest(repo, name, version)
    except RepositoryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{name}: latest -> {version}")


@model.command()
@run_dir_option
@click.option("--wait", type=float, default=1.0, show_default=True, help="Seconds to listen.")
@key_option
@json_option
def status(run_dir: str | None, wait: float, key: str | None, as_json: bool) -> None:
    """What every worker of a running launch serves, what the loader committed, and a rolling
    switch in progress (or how the last switch ended)."""
    bus = open_bus(open_run(run_dir), key)
    committed, loader, workers = _listen(bus.sub, bus.curve, wait)
    if as_json:
        heard = {
            "committed": msgspec.to_builtins(committed),
            "loader": loader,
            "workers": dict(sorted(workers.items())),
        }
        click.echo(json.dumps(heard, indent=2))
        return
    click.echo(format_status(committed, loader, workers))


def _listen(
    endpoint: str, curve: CurveConfig | None, wait: float
) -> tuple[ModelAnnouncement | None, dict[str, str], dict[str, dict[str, str]]]:
    """(the committed model, the loader's heartbeat detail, each worker's) heard in `wait` s."""
    workers: dict[str, dict[str, str]] = {}
    loader: dict[str, str] = {}
    committed: ModelAnnouncement | None = None
    with (
        zmq.Context() as ctx,
        Subscriber(
            ctx, endpoint, [Topic.HEARTBEAT, Topic.MODEL_ACTIVE], curve=curve, skip_replayed=True
        ) as sub,
    ):
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            got = sub.recv(int(left * 1000) + 1)
            if got is None:
                continue
            if isinstance(got.body, ModelAnnouncement):
                committed = got.body
            elif isinstance(got.body, Heartbeat) and got.body.kind == "worker":
                workers[got.body.node] = got.body.detail
            elif isinstance(got.body, Heartbeat) and got.body.kind == "loader":
                loader = got.body.detail
    return committed, loader, workers


def format_status(
    committed: ModelAnnouncement | None,
    loader: dict[str, str],
    workers: dict[str, dict[str, str]],
) -> str:
    """The text of `vigil model status`."""
    lines = []
    if committed is not None:
        lines.append(
            f"committed: {committed.name} {committed.version} "
            f"(generation {committed.generation}, sha256 {committed.sha256[:16]}…)"
        )
    else:
        lines.append("committed: none announced")
    if "rollout" in loader:
        lines.append(f"rollout:   {loader['rollout']}")
    elif "last_switch" in loader:
        lines.append(f"last switch: {loader['last_switch']}")
    for name, detail in sorted(workers.items()):
        footprint = f", {detail['footprint_mb']} MiB" if "footprint_mb" in detail else ""
        lines.append(
            f"  {name:<12} {detail.get('model', '-')} {detail.get('version', '-')} "
            f"(generation {detail.get('generation', '-')}{footprint})"
        )
    if not workers:
        lines.append("  no worker heartbeats heard")
    return "\n".join(lines)
