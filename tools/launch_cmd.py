"""`vigil launch`: bring a launch file up, supervise it, stop it cleanly."""

from __future__ import annotations

import shutil
import sys

import click

from vigil.errors import ConfigError
from vigil.launch import Launcher, LaunchError, load
from vigil.launch.check import check_plan, format_report
from vigil.launch.model import describe_arguments
from vigil.nodes import LogFormat, configure_logging
from vigil.tools._options import launch_arguments, log_format_option, new_run_dir_option
from vigil.tools._rundirs import new_run_dir

__all__ = ["launch"]


@click.command("launch")
@click.argument("launch_file", type=click.Path(dir_okay=False))
@launch_arguments
@new_run_dir_option
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--print", "print_plan", is_flag=True, help="Print the resolved plan and exit.")
@click.option("--show-args", is_flag=True, help="Print the file's declared arguments and exit.")
@click.option(
    "--host",
    default=None,
    help="Start only the nodes placed on this host (a name from the file's hosts:).",
)
@log_format_option
def launch(  # noqa: PLR0917 - click passes every option as an argument
    launch_file: str,
    assignments: dict[str, str],
    run_dir: str | None,
    duration: float | None,
    print_plan: bool,
    show_args: bool,
    host: str | None,
    log_format: LogFormat,
) -> None:
    """Start every node of LAUNCH_FILE and supervise them until Ctrl-C or --duration.

    NAME:=VALUE gives a value to an argument the file declares (see --show-args). Exits 0
    after a clean stop, 1 when a node failed to start or a required node failed for good (the
    system is then brought to SAFE_STOP first), 2 for an invalid file or argument.
    The launcher's own log goes to stderr; each node's goes to RUN_DIR/logs/NODE.log.
    """
    configure_logging(fmt=log_format)
    try:
        if show_args:
            click.echo(describe_arguments(launch_file))
            return
        probe = load(launch_file, run_dir or "run/<new>", host=host, arguments=assignments)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if print_plan:
        click.echo(probe.describe())
        return
    if probe.launch.hosts and host is None:
        hosts = ", ".join(sorted(probe.launch.hosts))
        click.echo(
            f"error: this file places nodes on hosts ({hosts}): pick one with --host", err=True
        )
        sys.exit(2)
    # every host's nodes
    graph = check_plan(load(launch_file, run_dir or "run/<new>", arguments=assignments))
    if graph.findings:
        width = shutil.get_terminal_size().columns
        click.echo(format_report(graph, brief=True, width=width), err=True)
    if not graph.ok:
        sys.exit(2)
    try:
        run = new_run_dir(probe.launch.name, run_dir)
    except OSError as exc:  # a full or read-only disk: one line, not a traceback
        click.echo(f"error: cannot make the run directory: {exc.strerror}", err=True)
        sys.exit(1)
    plan = load(launch_file, run.path, host=host, arguments=assignments)
    click.echo(f"run directory: {run.path}")
    try:
        with Launcher(plan, run) as launcher:
            launcher.start()
            code = launcher.supervise(duration)
            if launcher.failure:
                click.echo(f"error: {launcher.failure}; system in SAFE_STOP", err=True)
    except LaunchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)
