"""`vigil launch`: bring a launch file up, supervise it, stop it cleanly."""

from __future__ import annotations

import sys

import click

from vigil.errors import ConfigError
from vigil.launch import Launcher, LaunchError, load
from vigil.tools._rundirs import new_run_dir

__all__ = ["launch"]


@click.command("launch")
@click.argument("launch_file", type=click.Path(dir_okay=False))
@click.option("--run-dir", default=None, help="Run directory (default: run/<name>-<time>).")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.option("--print", "print_plan", is_flag=True, help="Print the resolved plan and exit.")
def launch(launch_file: str, run_dir: str | None, duration: float | None, print_plan: bool) -> None:
    """Start every node of LAUNCH_FILE and supervise them until Ctrl-C or --duration."""
    try:
        probe = load(launch_file, run_dir or "run/<new>")
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if print_plan:
        click.echo(probe.describe())
        return
    run = new_run_dir(probe.launch.name, run_dir)
    plan = load(launch_file, run.path)
    click.echo(f"run directory: {run.path}")
    try:
        with Launcher(plan, run) as launcher:
            launcher.start()
            code = launcher.supervise(duration)
            if launcher.failure:
                click.echo(f"error: {launcher.failure}", err=True)
    except LaunchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)
