"""Control-plane messages between the launcher, nodes and the worker pool."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["BusProbe", "NodeReady", "WorkerCredit"]


class NodeReady(Message, kw_only=True, frozen=True, tag="control.ready"):
    """A node tells the launcher it is up: its sockets are bound or connected."""

    name: str
    instance: int
    pid: int
    kind: str
    publishes: list[str] = []
    subscribes: list[str] = []
    endpoints: dict[str, str] = {}


class BusProbe(Message, kw_only=True, frozen=True, tag="control.probe"):
    """A node's round trip through the proxy at start: its publications are now delivered."""

    node: Annotated[str, msgspec.Meta(max_length=128)]
    nonce: Annotated[int, msgspec.Meta(ge=0)]


class WorkerCredit(Message, kw_only=True, frozen=True, tag="control.credit"):
    """A worker offers the ingest `credit` requests at a time (load-balanced dispatch).

    It is the worker's whole capacity, not an increment: the ingest subtracts what it has
    handed that worker and not yet heard back on, so sending it again (on every new
    connection, e.g. after an ingest restart) is always safe.
    """

    credit: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    model: str = ""
    version: str = ""
    pid: Annotated[int, msgspec.Meta(ge=0)] = 0
    host: str = ""
