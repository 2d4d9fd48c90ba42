"""The options the `vigil` commands share, each defined once: the run, the keys, JSON output.

`--key` always names a key file; what it is for depends on the command, so each meaning is one
option here: the client key of a tool on a Curve-secured bus, the key `model sign` signs with,
the public key `log verify` checks the log's checkpoints with, and the private keys `doctor`
audits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import click

from vigil.launch import parse_assignments

__all__ = [
    "KEY_ENV",
    "audited_keys_option",
    "json_option",
    "key_option",
    "launch_arguments",
    "log_format_option",
    "log_key_option",
    "new_run_dir_option",
    "run_dir_option",
    "signing_key_option",
]

KEY_ENV: Final = "VIGIL_KEY"

run_dir_option = click.option(
    "--run-dir",
    default=None,
    metavar="DIR",
    help="Run directory (default: $VIGIL_RUN_DIR or run/current).",
)
"""The `--run-dir` of every command that works on a run that exists."""

new_run_dir_option = click.option(
    "--run-dir",
    default=None,
    metavar="DIR",
    help="Run directory to create (default: run/<name>-<time>, linked as run/current).",
)
"""The `--run-dir` of the commands that start a run."""

key_option = click.option(
    "--key",
    envvar=KEY_ENV,
    default=None,
    metavar="FILE",
    help="Client key pair (NAME.key_secret, from `vigil keys gen`, allowed by the launch "
    f"file) for a tcp bus with CurveZMQ (default ${KEY_ENV}; not needed on ipc).",
)
"""The `--key` of every tool that connects to the bus."""

signing_key_option = click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM private key (from `vigil model keygen`).",
)
"""The `--key` that signs a model."""

log_key_option = click.option(
    "--key",
    "key_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The logger's public key (PEM, `log.pub` from `vigil log keygen` or the run "
    "directory): check the signatures of the store's checkpoints.",
)
"""The `--key` that checks the sealed log's signed checkpoints."""

audited_keys_option = click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A private key file, or a directory of *.key files, to check (repeatable).",
)
"""The `--key` of the files `vigil doctor` checks."""

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
"""The `--json` of every command whose output a program may read."""


def _assignments(
    ctx: click.Context, param: click.Parameter, tokens: tuple[str, ...]
) -> dict[str, str]:
    rest, values = parse_assignments(tokens)
    if rest:
        raise click.BadParameter(
            f"{rest[0]!r} is not NAME:=VALUE (see --show-args of `vigil launch`)", ctx, param
        )
    return values


launch_arguments = click.argument(
    "assignments", nargs=-1, callback=_assignments, metavar="[NAME:=VALUE]..."
)
"""The `NAME:=VALUE` launch arguments of `launch` and `graph check`, as a mapping."""
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["auto", "console", "json"]),
    default="auto",
    show_default=True,
    help="How this process logs on stderr: console lines for people, JSON lines for programs; "
    "auto picks console on a terminal.",
)
"""The `--log-format` of the commands that log as they run."""
