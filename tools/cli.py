"""The `vigil` command line.

Each command NAME lives in `vigil.tools.NAME_cmd` as the attribute NAME and is imported only
when it runs or its own help is asked for: the commands between them pull in zmq, numpy,
structlog, rich and scipy, and `vigil --help` should not wait for any of them. The summaries
`vigil --help` lists are therefore written here; a unit test holds each to the first sentence of
its command's docstring.
"""

from __future__ import annotations

import importlib
from typing import Final

import click

__all__ = ["COMMANDS", "cli", "main"]

COMMANDS: Final = {
    "bag": "Record bus traffic to MCAP bags, inspect them and play them back.",
    "bench": "Run a benchmark; each prints its figures beside a same-run baseline.",
    "demo": "Bring the demo pipeline up on CPU, drive it below what this machine sustains, "
    "shut it down and summarise.",
    "doctor": "Check this target: clocks, GPU, keys, run directory, disk, versions.",
    "fsc": "Print the safety traceability matrix; exit 1 when a requirement lacks code or a test.",
    "graph": "Check the node graph of a launch file before anything runs.",
    "keys": "Make and allow Curve key pairs (`NAME.key` public, `NAME.key_secret` private).",
    "launch": "Start every node of LAUNCH_FILE and supervise them until Ctrl-C or --duration.",
    "log": "Read the logger's sealed store: verify it, show, export and trace its entries.",
    "model": "Signed model repository: add versions, keys, signatures, status.",
    "node": "The nodes of a running launch and their health.",
    "schema": "Message schemas.",
    "top": "A live view of nodes (pid, CPU, memory, heartbeat, restarts), topics (rate, "
    "bandwidth, losses), the safety state and the model version each worker serves.",
    "topic": "Inspect, measure and publish live topics of a running launch.",
}
"""Every command of `vigil`, with the summary `vigil --help` shows for it."""


class _LazyGroup(click.Group):
    """A group whose commands are imported on first use, listed from `COMMANDS` meanwhile."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module = importlib.import_module(f"vigil.tools.{cmd_name}_cmd")
        command: click.Command = getattr(module, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        # A bare Command stands in for each one, to shorten its summary as click would.
        rows = [(n, click.Command(n, help=COMMANDS[n]).get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="vigil")
def cli() -> None:
    """vigil: a safety-minded ML inference pipeline on a ZeroMQ bus."""
    from vigil.nodes import configure_logging  # noqa: PLC0415 - pulls in structlog; see above

    configure_logging()


def main() -> None:
    """Console-script entry point."""
    cli()
