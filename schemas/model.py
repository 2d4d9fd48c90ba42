"""Model lifecycle: what the loader announces and every step it takes."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["ModelAnnouncement", "ModelEvent", "ModelStep"]


class ModelStep(enum.StrEnum):
    """A step in a model version's lifecycle."""

    SEEN = "seen"
    VERIFIED = "verified"
    REFUSED = "refused"
    LOADING = "loading"
    READY = "ready"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


class ModelAnnouncement(Message, kw_only=True, frozen=True, tag="model.announce"):
    """A verified model version that workers may load (latched on its topic)."""

    name: Annotated[str, msgspec.Meta(max_length=64)]
    version: Annotated[str, msgspec.Meta(max_length=64)]
    path: str
    sha256: Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    input_name: str = ""
    generation: Annotated[int, msgspec.Meta(ge=0)] = 0


class ModelEvent(Message, kw_only=True, frozen=True, tag="model.event"):
    """One lifecycle step of one model version, on one node."""

    step: ModelStep
    name: str
    version: str
    node: str
    instance: int = 0
    detail: Annotated[str, msgspec.Meta(max_length=512)] = ""
