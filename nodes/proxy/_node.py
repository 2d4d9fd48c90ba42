"""The bus proxy node: forwards every topic between publishers and subscribers."""

from __future__ import annotations

from vigil.bus.proxy import Proxy
from vigil.nodes._runtime import Node
from vigil.nodes.contract import ExitCode, NodeArgs
from vigil.nodes.proxy._contract import KIND, ProxyConfig
from vigil.schemas import LATCHED_TOPICS, DiagCode, Severity

__all__ = ["run"]

_RETRY_NS = 1_000_000_000


class _SaveWatch:
    """Says once when latched values stop reaching the disk, and once when they do again;
    tries the refused saves again every second meanwhile."""

    def __init__(self, node: Node, proxy: Proxy) -> None:
        self.node = node
        self.proxy = proxy
        self.reported = ""
        self.retry_at = 0

    def check(self) -> None:
        now = self.node.clock()
        if self.proxy.unsaved and now >= self.retry_at:
            self.retry_at = now + _RETRY_NS
            self.proxy.retry_saves()
        error = self.proxy.save_error
        if error == self.reported:
            return
        if error:
            self.node.diag(
                DiagCode.DISK_FULL,
                f"latched values not saved ({error}): kept in memory, saved when space returns",
                severity=Severity.ERROR,
                field="latched",
            )
        else:
            self.node.diag(
                DiagCode.DISK_FULL,
                "latched values saved again",
                severity=Severity.INFO,
                field="latched",
            )
        self.reported = error


def run(config: ProxyConfig, args: NodeArgs) -> ExitCode:
    """Bind the proxy's XSUB/XPUB endpoints and forward until told to stop."""
    with Node(args) as node:
        proxy = node.enter(
            Proxy(
                node.ctx,
                node.pub_endpoint,
                node.sub_endpoint,
                LATCHED_TOPICS,
                keep=node.run.latched,
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
        saves = _SaveWatch(node, proxy)
        while not node.stopping:
            proxy.handle(node.poll())
            saves.check()
        node.log.info("node.stopping", reason=node.stop_reason, forwarded=proxy.forwarded)
    return ExitCode.OK
