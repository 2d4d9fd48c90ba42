"""Start one node process: decode its identity and typed config, run it, map the exit."""

from __future__ import annotations

import os

import msgspec
import structlog

from vigil.nodes._logging import configure_logging, set_identity
from vigil.nodes._preload import preload
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.kinds import node_kind

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Run the node described by `argv` = [args JSON, config JSON]."""
    configure_logging()
    log = structlog.get_logger()
    if len(argv) != 2:
        log.error("node.usage", expected="ARGS_JSON CONFIG_JSON")
        return ExitCode.CONFIG
    try:
        args = msgspec.json.decode(argv[0], type=NodeArgs)
        kind = node_kind(args.kind)
        config = msgspec.json.decode(argv[1], type=kind.config)
    except (msgspec.ValidationError, msgspec.DecodeError, KeyError) as exc:
        log.error("node.config_invalid", error=str(exc))
        return ExitCode.CONFIG
    # Started by the launcher, its libraries are loaded already; by hand, it re-executes once.
    preload(kind.preload)
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
        return kind.run(config, args)
    except KeyboardInterrupt:
        return ExitCode.OK
    except Exception:  # the node boundary: log whatever escaped and say so in the exit code
        log.exception("node.crashed", node=args.label, kind=args.kind)
        return ExitCode.FAILURE
