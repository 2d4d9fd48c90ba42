"""`vigil graph check`: the graph check of a launch file, on the command line."""

from __future__ import annotations

import shutil
import sys

import click
import msgspec

from vigil.errors import ConfigError
from vigil.launch.check import check_file, format_report
from vigil.tools._options import json_option, launch_arguments

__all__ = ["graph"]


@click.group("graph")
def graph() -> None:
    """Check the node graph of a launch file before anything runs."""


@graph.command("check")
@click.argument("launch_file", type=click.Path(dir_okay=False))
@launch_arguments
@json_option
@click.option("--strict", is_flag=True, help="Fail on warnings too.")
def check(launch_file: str, assignments: dict[str, str], as_json: bool, strict: bool) -> None:
    """Check LAUNCH_FILE (with its arguments NAME:=VALUE): topics, endpoints, queue bounds,
    single points of failure.

    Exits 1 when a rule is broken (with --strict, on warnings too), 2 on an invalid file.
    """
    try:
        report = check_file(launch_file, assignments)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        data = msgspec.to_builtins(report)
        data["ok"] = report.ok
        click.echo(msgspec.json.format(msgspec.json.encode(data)).decode())
    else:
        click.echo(format_report(report, width=shutil.get_terminal_size().columns))
    if report.errors or (strict and report.warnings):
        sys.exit(1)
