"""Start one node process: decode its identity and typed config, run it, map the exit."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import msgspec
import structlog

from vigil.nodes._logging import configure_logging, set_identity
from vigil.nodes._runtime import ExitCode, NodeArgs

__all__ = ["NODE_KINDS", "config_type", "configure_logging", "main", "node_module"]

# Node kind -> the module that implements it (each exposes `Config` and `run`).
NODE_KINDS: dict[str, str] = {
    "proxy": "vigil.nodes.proxy",
    "ingest": "vigil.nodes.ingest",
    "worker": "vigil.nodes.worker",
    "watchdog": "vigil.nodes.watchdog",
    "logger": "vigil.nodes.logger",
    "loader": "vigil.nodes.loader",
    "metrics": "vigil.nodes.metrics",
    "demo_source": "vigil.nodes.demo_source",
    "demo_sink": "vigil.nodes.demo_sink",
}


def node_module(kind: str) -> ModuleType:
    """The module of a node kind; KeyError names the kind when it is unknown."""
    return importlib.import_module(NODE_KINDS[kind])


def config_type(kind: str) -> type[msgspec.Struct]:
    """The typed configuration of a node kind."""
    cls: type[msgspec.Struct] = node_module(kind).Config
    return cls


def main(argv: list[str]) -> int:
    """Run the node described by `argv` = [args JSON, config JSON]."""
    configure_logging()
    log = structlog.get_logger()
    if len(argv) != 2:
        log.error("node.usage", expected="ARGS_JSON CONFIG_JSON")
        return ExitCode.CONFIG
    try:
        args = msgspec.json.decode(argv[0], type=NodeArgs)
        module = node_module(args.kind)
        config = msgspec.json.decode(argv[1], type=module.Config)
    except (msgspec.ValidationError, msgspec.DecodeError, KeyError) as exc:
        log.error("node.config_invalid", error=str(exc))
        return ExitCode.CONFIG
    set_identity(args.label, args.instance, args.kind)
    if os.geteuid() == 0 and not args.allow_root:
        log.error(
            "node.refused_root",
            node=args.label,
            reason="a node runs as root only when the launch file says allow_root: true;"
            " give it a user: instead",
        )
        return ExitCode.CONFIG
    try:
        code: int = module.run(config, args)
    except KeyboardInterrupt:
        return ExitCode.OK
    except Exception:  # the node boundary: log whatever escaped and say so in the exit code
        log.exception("node.crashed", node=args.label, kind=args.kind)
        return ExitCode.FAILURE
    return code
