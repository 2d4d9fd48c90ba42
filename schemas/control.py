"""Control-plane messages between the launcher, nodes and the worker pool."""

from __future__ import annotations

from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["NodeReady", "WorkerCredit"]


class NodeReady(Message, kw_only=True, frozen=True, tag="control.ready"):
    """A node tells the launcher it is up: its sockets are bound or connected."""

    name: str
    instance: int
    pid: int
    kind: str
    publishes: list[str] = []
    subscribes: list[str] = []
    endpoints: dict[str, str] = {}


class WorkerCredit(Message, kw_only=True, frozen=True, tag="control.credit"):
    """A worker asks the ingest for up to `credit` more requests (load-balanced dispatch)."""

    credit: Annotated[int, msgspec.Meta(ge=0, le=4096)]
    model: str = ""
    version: str = ""
    pid: Annotated[int, msgspec.Meta(ge=0)] = 0
    host: str = ""
