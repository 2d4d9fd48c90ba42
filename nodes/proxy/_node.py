"""The bus proxy node: forwards every topic between publishers and subscribers."""

from __future__ import annotations

from vigil.bus.proxy import Proxy
from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.proxy._contract import KIND, ProxyConfig
from vigil.schemas import LATCHED_TOPICS

__all__ = ["run"]


def run(config: ProxyConfig, args: NodeArgs) -> ExitCode:
    """Bind the proxy's XSUB/XPUB endpoints and forward until told to stop."""
    with Node(args) as node:
        proxy = node.enter(
            Proxy(
                node.ctx,
                node.pub_endpoint,
                node.sub_endpoint,
                LATCHED_TOPICS,
                keep=node.run.path / "latched",
                curve=node.args.curve,
                gate=node.gate,
            )
        )
        proxy.register(node.poller)
        node.ready(
            KIND.contract(config),
            endpoints={"xsub": node.pub_endpoint, "xpub": node.sub_endpoint},
            join=False,  # the round trip runs through this very loop
        )
        while not node.stopping:
            proxy.handle(node.poll())
        node.log.info("node.stopping", reason=node.stop_reason, forwarded=proxy.forwarded)
    return ExitCode.OK
