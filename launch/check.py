"""The graph check: find wiring faults in a launch plan before any process starts.

The check reads each node kind's contract (`NodeKind.contract`, declared by the node's package)
with its typed configuration and applies these rules:

* **topics**: every subscribed topic has a publisher and one type across everyone who uses
  it; a subscription the node cannot work without (`requires`) and nobody publishes is an
  error, any other unpublished subscription a warning;
* **point to point**: every worker backend connects to an ingest backend bound in the launch,
  every client (demo source, watchdog probe) to an ingest frontend, every ingest backend has a
  worker, and no two nodes bind one address;
* **queues**: every buffer on the request path has a bound (and its worst case is stated);
* **single points of failure**: each request-path node is listed with the safety mechanisms
  that cover its failure — supervision (a restart policy with restarts), heartbeat (a
  watchdog watches every node's heartbeat), redundancy (more than one replica, or a standby:
  another node binding the same roles that every one of its peers also connects to, as two
  ingests that every client and worker reach) — and a single point that none covers is an
  error.

The coverage figure follows the single-point fault metric of ISO 26262-5 (SPFM =
1 - sum(lambda_SPF + lambda_RF) / sum(lambda)) with every request-path process given the same
failure rate, since none is known for a process: the fraction of request-path processes whose
failure is covered by at least one safety mechanism.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from vigil.errors import ConfigError
from vigil.launch.findings import Finding, Level
from vigil.launch.model import LaunchPlan, NodeSpec, load
from vigil.nodes.contract import (
    LAUNCHER_PUBLISHES,
    Endpoint,
    EndpointRole,
    NodeContract,
    NodeKind,
)
from vigil.nodes.kinds import node_kinds
from vigil.schemas import TOPICS, schema_id

__all__ = [
    "GraphReport",
    "PathElement",
    "QueueBound",
    "TopicLink",
    "check_file",
    "check_plan",
    "format_report",
]

_LAUNCHER: Final = "launcher"
_WILDCARD_HOSTS: Final = frozenset({"*", "0.0.0.0", "::", "[::]"})


class TopicLink(msgspec.Struct, frozen=True, kw_only=True):
    """Who publishes and who subscribes one topic, and the types they use it with."""

    topic: str
    types: list[str]
    publishers: list[str]
    subscribers: list[str]


class QueueBound(msgspec.Struct, frozen=True, kw_only=True):
    """A bounded buffer of one node and its worst case in memory (0 when unknown)."""

    node: str
    name: str
    bound: int
    worst_bytes: int


class PathElement(msgspec.Struct, frozen=True, kw_only=True):
    """A request-path node: how many processes, and what covers the failure of each."""

    node: str
    kind: str
    replicas: int
    single_point: bool
    mechanisms: list[str]

    @property
    def covered(self) -> bool:
        """Whether at least one safety mechanism covers the failure of a process."""
        return bool(self.mechanisms)


class GraphReport(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of a graph check."""

    source: str
    findings: list[Finding]
    topics: list[TopicLink]
    queues: list[QueueBound]
    elements: list[PathElement]
    coverage: float
    """Fraction of request-path processes whose failure a safety mechanism covers."""

    @property
    def errors(self) -> list[Finding]:
        """The findings that stop a launch."""
        return [f for f in self.findings if f.level is Level.ERROR]

    @property
    def warnings(self) -> list[Finding]:
        """The findings that are only reported."""
        return [f for f in self.findings if f.level is Level.WARNING]

    @property
    def ok(self) -> bool:
        """True when no rule is broken badly enough to stop a launch."""
        return not self.errors


class _Node(msgspec.Struct, frozen=True, kw_only=True):
    spec: NodeSpec
    contract: NodeContract
    run_dir: str


def _address(run_dir: str, name: str) -> str:
    """The zmq address a configured endpoint name resolves to (as `resolve_endpoint` does)."""
    return name if "://" in name else f"ipc://{Path(run_dir) / name}.sock"


def _split_tcp(address: str) -> tuple[str, str] | None:
    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://") :].rpartition(":")
    return host, port


def _reaches(bound: str, connected: str) -> bool:
    """Whether a connect to `connected` reaches a socket bound at `bound`."""
    if bound == connected:
        return True
    b, c = _split_tcp(bound), _split_tcp(connected)
    if b is None or c is None:
        return False
    return b[1] == c[1] and (b[0] in _WILDCARD_HOSTS or b[0] == c[0])


def _nodes(plan: LaunchPlan, kinds: Mapping[str, NodeKind[Any]]) -> list[_Node]:
    """One entry per launch-file node (replicas share a contract), the proxy first."""
    seen: dict[str, _Node] = {}
    run_dir = plan.processes[0].args.run_dir if plan.processes else "."
    proxy = kinds["proxy"]
    seen["proxy"] = _Node(
        spec=NodeSpec(name="proxy", kind="proxy", required=True),
        contract=proxy.contract(proxy.config()),
        run_dir=run_dir,
    )
    for process in plan.processes:
        if process.spec.name not in seen:
            seen[process.spec.name] = _Node(
                spec=process.spec,
                contract=kinds[process.spec.kind].contract(process.config),
                run_dir=process.args.run_dir,
            )
    return list(seen.values())


def _check_topics(nodes: list[_Node], findings: list[Finding]) -> list[TopicLink]:
    publishers: dict[str, list[str]] = defaultdict(list)
    subscribers: dict[str, list[str]] = defaultdict(list)
    # topic -> type -> who uses the topic with that type
    typed: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for topic in LAUNCHER_PUBLISHES:
        publishers[topic].append(_LAUNCHER)
        typed[topic][schema_id(TOPICS[topic])].append(_LAUNCHER)
    for n in nodes:
        c = n.contract
        for topic in sorted(c.publishes):
            publishers[topic].append(n.spec.name)
        for topic in sorted(c.subscribes):
            subscribers[topic].append(n.spec.name)
        for topic in sorted(c.publishes | c.subscribes):
            kind = c.topic_type(topic)
            if kind is None:
                findings.append(
                    Finding(
                        level=Level.ERROR,
                        check="unknown-topic",
                        subject=n.spec.name,
                        detail=f"uses {topic}, which the topic catalogue does not know",
                    )
                )
            else:
                typed[topic][kind].append(n.spec.name)
    for n in nodes:
        c = n.contract
        for topic in sorted(c.subscribes):
            others = [p for p in publishers.get(topic, []) if p != n.spec.name]
            # A node reading back its own latched value (a restarted loader resuming the
            # committed model) needs nobody else to publish it.
            if others or topic in c.latched:
                continue
            required = topic in c.requires
            findings.append(
                Finding(
                    level=Level.ERROR if required else Level.WARNING,
                    check="no-publisher",
                    subject=n.spec.name,
                    detail=f"subscribes {topic}, which no other node publishes"
                    + ("" if required else " (it works without it)"),
                )
            )
    for topic, kinds in sorted(typed.items()):
        if len(kinds) > 1:
            said = "; ".join(
                f"{kind} by {', '.join(sorted(set(who)))}" for kind, who in sorted(kinds.items())
            )
            findings.append(
                Finding(
                    level=Level.ERROR,
                    check="type-mismatch",
                    subject=", ".join(sorted({w for who in kinds.values() for w in who})),
                    detail=f"{topic} is used with different types: {said}",
                )
            )
    return [
        TopicLink(
            topic=topic,
            types=sorted(typed.get(topic, {})),
            publishers=sorted(set(publishers.get(topic, []))),
            subscribers=sorted(set(subscribers.get(topic, []))),
        )
        for topic in sorted(set(publishers) | set(subscribers))
    ]


_ROLE_TEXT: Final = {
    EndpointRole.INGEST_FRONTEND: "an ingest frontend",
    EndpointRole.WORKER_BACKEND: "an ingest backend",
}


def _check_endpoints(nodes: list[_Node], findings: list[Finding]) -> None:
    binds: list[tuple[_Node, Endpoint, str]] = []
    connects: list[tuple[_Node, Endpoint, str]] = []
    for n in nodes:
        for e in n.contract.endpoints:
            (binds if e.bind else connects).append((n, e, _address(n.run_dir, e.name)))
    by_address: dict[str, list[str]] = defaultdict(list)
    for n, _, address in binds:
        by_address[address].append(n.spec.name)
    for n, _, address in binds:
        if n.spec.replicas > 1:
            findings.append(
                Finding(
                    level=Level.ERROR,
                    check="duplicate-bind",
                    subject=n.spec.name,
                    detail=f"{n.spec.replicas} replicas would all bind {address}",
                )
            )
    for address, owners in sorted(by_address.items()):
        if len(owners) > 1:
            findings.append(
                Finding(
                    level=Level.ERROR,
                    check="duplicate-bind",
                    subject=", ".join(owners),
                    detail=f"{address} is bound by more than one node",
                )
            )
    served: set[int] = set()
    for n, e, address in connects:
        peers = [
            (i, b)
            for i, (_, b, bound) in enumerate(binds)
            if b.role is e.role and _reaches(bound, address)
        ]
        served.update(i for i, _ in peers)
        if peers:
            continue
        remote = address.startswith("tcp://")
        findings.append(
            Finding(
                level=Level.WARNING if remote else Level.ERROR,
                check="no-peer",
                subject=n.spec.name,
                detail=f"connects to {address}, which is not {_ROLE_TEXT[e.role]} bound in this"
                " launch" + (" (fine only if another host binds it)" if remote else ""),
            )
        )
    for i, (n, e, address) in enumerate(binds):
        if e.role is EndpointRole.WORKER_BACKEND and i not in served:
            findings.append(
                Finding(
                    level=Level.ERROR,
                    check="no-peer",
                    subject=n.spec.name,
                    detail=f"no worker connects to its backend {address}: every request would"
                    " end UNAVAILABLE",
                )
            )


def _check_queues(nodes: list[_Node], findings: list[Finding]) -> list[QueueBound]:
    bounds: list[QueueBound] = []
    for n in nodes:
        for q in n.contract.queues:
            if q.bound <= 0:
                findings.append(
                    Finding(
                        level=Level.ERROR,
                        check="unbounded-queue",
                        subject=n.spec.name,
                        detail=f"{q.name} has no bound: memory grows until the process dies",
                    )
                )
            bounds.append(
                QueueBound(
                    node=n.spec.name, name=q.name, bound=q.bound, worst_bytes=q.bound * q.item_bytes
                )
            )
    return bounds


# implements: SR-RED-001
def _standbys(nodes: list[_Node]) -> dict[str, list[str]]:
    """For each node that binds request-path endpoints, the other nodes that can take over
    its whole job: every peer that connects to it (clients, workers) connects to them too."""
    binds: dict[str, list[tuple[EndpointRole, str]]] = defaultdict(list)
    connects: dict[str, list[tuple[EndpointRole, str]]] = defaultdict(list)
    for n in nodes:
        for e in n.contract.endpoints:
            where = binds if e.bind else connects
            where[n.spec.name].append((e.role, _address(n.run_dir, e.name)))

    # For each connecting node: the (binder, role) pairs it reaches.
    reach = [
        {
            (binder, role)
            for binder, bound in binds.items()
            for role, address in bound
            for want, dialled in dialling
            if want is role and _reaches(address, dialled)
        }
        for dialling in connects.values()
    ]
    standbys: dict[str, list[str]] = {}
    for name, bound in binds.items():
        roles = {role for role, _ in bound}
        others = [o for o, b in binds.items() if o != name and roles <= {r for r, _ in b}]
        standbys[name] = [
            other
            for other in others
            if all(
                (other, role) in seen for seen in reach for role in roles if (name, role) in seen
            )
        ]
    return standbys


def _check_single_points(
    nodes: list[_Node], findings: list[Finding]
) -> tuple[list[PathElement], float]:
    watchdogs = [n.spec.name for n in nodes if n.spec.kind == "watchdog"]
    standbys = _standbys(nodes)
    elements: list[PathElement] = []
    for n in nodes:
        if not n.contract.request_path:
            continue
        spec = n.spec
        mechanisms: list[str] = []
        if spec.restart.max_restarts > 0:
            mechanisms.append(
                f"supervision ({spec.restart.max_restarts} restarts in {spec.restart.window_s:g} s)"
            )
        if watchdogs:
            mechanisms.append(f"heartbeat ({', '.join(watchdogs)})")
        if spec.replicas > 1:
            mechanisms.append(f"redundancy ({spec.replicas} replicas)")
        others = standbys.get(spec.name, [])
        if others:
            mechanisms.append(f"redundancy (standby: {', '.join(others)})")
        element = PathElement(
            node=spec.name,
            kind=spec.kind,
            replicas=spec.replicas,
            single_point=spec.replicas == 1 and not others,
            mechanisms=mechanisms,
        )
        elements.append(element)
        if element.single_point and not element.covered:
            findings.append(
                Finding(
                    level=Level.ERROR,
                    check="uncovered-single-point",
                    subject=spec.name,
                    detail="a single point of failure on the request path with no restart"
                    " policy, no watchdog and no replica: its failure would go unhandled",
                )
            )
    total = sum(e.replicas for e in elements)
    covered = sum(e.replicas for e in elements if e.covered)
    return elements, (covered / total if total else 1.0)


def check_plan(
    plan: LaunchPlan, *, kinds: Mapping[str, NodeKind[Any]] | None = None
) -> GraphReport:
    """Check a resolved launch plan; `kinds` replaces the declared node kinds (tests)."""
    findings: list[Finding] = []
    try:
        nodes = _nodes(plan, node_kinds() if kinds is None else kinds)
    except KeyError as exc:
        raise ConfigError(plan.source, "", f"no contract for node kind {exc.args[0]!r}") from exc
    topics = _check_topics(nodes, findings)
    _check_endpoints(nodes, findings)
    queues = _check_queues(nodes, findings)
    elements, coverage = _check_single_points(nodes, findings)
    findings.sort(key=lambda f: (f.level is not Level.ERROR, f.check, f.subject))
    return GraphReport(
        source=plan.source,
        findings=findings,
        topics=topics,
        queues=queues,
        elements=elements,
        coverage=coverage,
    )


def check_file(path: str | Path, arguments: Mapping[str, str] | None = None) -> GraphReport:
    """Load a launch file with its `arguments` (ConfigError names what is wrong) and check its
    graph."""
    return check_plan(load(path, Path("run") / "graph-check", arguments=arguments))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def _hang(head: str, tail: str, width: int) -> list[str]:
    """`head` then `tail`, wrapped at `width` with continuation lines under the tail."""
    return textwrap.wrap(
        head + tail, max(width, len(head) + 20), subsequent_indent=" " * len(head),
        break_long_words=False, break_on_hyphens=False,
    ) or [head.rstrip()]  # fmt: skip


def format_report(report: GraphReport, *, brief: bool = False, width: int = 80) -> str:
    """The report as text for a terminal `width` columns wide; `brief` gives the findings
    only."""
    errors, warnings = len(report.errors), len(report.warnings)
    head = (
        f"graph check {report.source}: {errors} error{'s' * (errors != 1)}, "
        f"{warnings} warning{'s' * (warnings != 1)}"
    )
    found = [
        line
        for f in report.findings
        for line in _hang(f"  {f.level:<7} {f.check:<22} ", f"{f.subject}: {f.detail}", width)
    ]
    if brief:
        return "\n".join([head, *found])
    lines = [head, "", "topics:"]
    for t in report.topics:
        lines += _hang(
            f"  {t.topic:<18} ",
            f"[{', '.join(t.types) or '?'}]  pub: {', '.join(t.publishers) or '-'}"
            f"  sub: {', '.join(t.subscribers) or '-'}",
            width,
        )
    lines += ["", "queues:"]
    for q in report.queues:
        worst = f" (at most {_size(q.worst_bytes)})" if q.worst_bytes else ""
        lines.append(f"  {q.node}: {q.name} <= {q.bound}{worst}")
    lines += ["", f"request path: single-point fault coverage {report.coverage:.1%}"]
    for e in report.elements:
        what = (
            "single point"
            if e.single_point
            else f"{e.replicas} replicas"
            if e.replicas > 1
            else "with standby"
        )
        cover = ", ".join(e.mechanisms) or "NOT COVERED"
        lines += _hang(f"  {e.node:<12} {e.kind:<8} {what:<13} ", cover, width)
    if found:
        lines += ["", "findings:", *found]
    return "\n".join(lines)
