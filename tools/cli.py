"""The `vigil` command line."""

from __future__ import annotations

import click

from vigil.nodes import configure_logging
from vigil.tools.bag_cmd import bag
from vigil.tools.bench_cmd import bench
from vigil.tools.demo_cmd import demo
from vigil.tools.doctor_cmd import doctor
from vigil.tools.fsc_cmd import fsc
from vigil.tools.graph_cmd import graph
from vigil.tools.keys_cmd import keys
from vigil.tools.launch_cmd import launch
from vigil.tools.log_cmd import log
from vigil.tools.model_cmd import model
from vigil.tools.node_cmd import node
from vigil.tools.schema_cmd import schema
from vigil.tools.top_cmd import top
from vigil.tools.topic_cmd import topic

__all__ = ["cli", "main"]


@click.group()
@click.version_option(package_name="vigil")
def cli() -> None:
    """vigil: a safety-minded ML inference pipeline on a ZeroMQ bus."""
    configure_logging()


for _command in (bag, bench, demo, fsc, graph, launch, log, model, node, schema, top, topic):
    cli.add_command(_command)
cli.add_command(keys)
cli.add_command(doctor)


def main() -> None:
    """Console-script entry point."""
    cli()
