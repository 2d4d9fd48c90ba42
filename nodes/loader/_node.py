"""The loader node's loop: verify the configured model, announce it, report every step."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path
from typing import Annotated

import msgspec

from vigil.nodes._runtime import ExitCode, Node, NodeArgs
from vigil.schemas import (
    AuditId,
    DiagCode,
    ModelAnnouncement,
    ModelEvent,
    ModelStep,
    Severity,
    Topic,
)
from vigil.schemas._base import Config as NodeConfig

__all__ = ["Config", "LoaderConfig", "run"]

_PACKAGE = "package:"


class LoaderConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which model to serve and the digest it must have."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    # A file path, or `package:<distribution module>/<path inside it>` for a model that
    # ships inside an installed wheel (read from disk, never fetched).
    path: str
    # The pinned SHA-256 of the model file; the loader refuses any other bytes.
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


Config = LoaderConfig


def resolve_model_path(node: Node, path: str) -> Path:
    """The file a configured model path names."""
    if path.startswith(_PACKAGE):
        package, _, inside = path[len(_PACKAGE) :].partition("/")
        with resources.as_file(resources.files(package) / inside) as found:
            return Path(found)
    return node.resolve(path)


def run(config: LoaderConfig, args: NodeArgs) -> ExitCode:
    """Verify the model and announce it (latched), then serve until SIGTERM/SIGINT."""
    with Node(args) as node:
        node.ready(publishes=[Topic.MODEL_ACTIVE, Topic.MODEL_EVENT, Topic.AUDIT], subscribes=[])

        def event(step: ModelStep, detail: str = "") -> None:
            node.publisher.publish(
                Topic.MODEL_EVENT,
                ModelEvent(
                    step=step,
                    name=config.name,
                    version=config.version,
                    node=args.label,
                    detail=detail,
                ),
            )

        path = resolve_model_path(node, config.path)
        event(ModelStep.SEEN, path.name)
        node.audit(AuditId.MODEL_SEEN, f"{config.name} {config.version}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            event(ModelStep.REFUSED, f"unreadable: {exc.strerror}")
            node.diag(DiagCode.MODEL_INTEGRITY, "model unreadable", severity=Severity.CRITICAL)
            return ExitCode.INTEGRITY
        digest = hashlib.sha256(data).hexdigest()
        if digest != config.sha256:
            event(ModelStep.REFUSED, "sha256 mismatch")
            node.audit(AuditId.MODEL_REFUSED, f"{config.name} {config.version}: sha256 mismatch")
            node.diag(
                DiagCode.MODEL_INTEGRITY,
                f"{config.name} {config.version}: sha256 {digest} != pinned {config.sha256}",
                severity=Severity.CRITICAL,
            )
            return ExitCode.INTEGRITY
        event(ModelStep.VERIFIED, f"sha256 {digest}")
        node.audit(AuditId.MODEL_VERIFIED, f"{config.name} {config.version} sha256 {digest}")
        node.publisher.publish(
            Topic.MODEL_ACTIVE,
            ModelAnnouncement(
                name=config.name,
                version=config.version,
                path=str(path.resolve()),
                sha256=digest,
                size=len(data),
                generation=1,
            ),
        )
        event(ModelStep.COMMITTED)
        node.audit(AuditId.MODEL_COMMITTED, f"{config.name} {config.version}")
        while not node.stopping:
            node.poll()
    return ExitCode.OK
