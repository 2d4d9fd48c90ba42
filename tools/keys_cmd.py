"""`vigil keys`: CurveZMQ key pairs for the nodes and clients of a tcp bus."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import click
import zmq.auth

__all__ = ["keys"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not re.match(_NAME, value):
        raise click.BadParameter("letters, digits, '.', '_' and '-' only (at most 64)")
    return value


@click.group("keys")
def keys() -> None:
    """Make and allow Curve key pairs (`NAME.key` public, `NAME.key_secret` private)."""


@keys.command("gen")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Key folder.")
@click.option("--name", required=True, callback=_check_name, help="Key name (node, host, client).")
@click.option("--force", is_flag=True, help="Replace an existing key pair of that name.")
def gen(out: str, name: str, force: bool) -> None:
    """Write a new key pair NAME.key / NAME.key_secret (mode 0600) into OUT."""
    folder = Path(out)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    if (public.exists() or secret.exists()) and not force:
        click.echo(f"error: {public} exists; use --force to replace it", err=True)
        sys.exit(1)
    # Made with a restrictive umask: the secret file is never readable by others, not even
    # for the moment between creation and chmod.
    previous = os.umask(0o077)
    try:
        made_public, made_secret = zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(previous)
    os.chmod(made_secret, 0o600)
    os.chmod(made_public, 0o644)
    click.echo(f"public: {made_public}\nsecret: {made_secret}")


@keys.command("allow")
@click.argument("public_key", type=click.Path(dir_okay=False, exists=True))
@click.option("--into", required=True, type=click.Path(file_okay=False), help="Allow-list folder.")
def allow(public_key: str, into: str) -> None:
    """Copy a PUBLIC_KEY (`NAME.key`) into an allow-list folder (`security.allowed: DIR`)."""
    source = Path(public_key)
    public, secret = zmq.auth.load_certificate(str(source))
    if secret is not None or source.suffix != ".key":
        click.echo("error: give the public NAME.key file, never the secret one", err=True)
        sys.exit(1)
    folder = Path(into)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    shutil.copyfile(source, folder / source.name)
    click.echo(f"allowed {source.stem}: {public.decode()}")
