"""Model lifecycle: what the loader announces and every step it takes."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from vigil.schemas._base import Message

__all__ = ["ModelAction", "ModelAnnouncement", "ModelCommand", "ModelEvent", "ModelStep"]


class ModelStep(enum.StrEnum):
    """A step in a model version's lifecycle."""

    SEEN = "seen"
    VERIFIED = "verified"
    REFUSED = "refused"
    LOADING = "loading"
    READY = "ready"
    # A worker that cannot load the version beside the serving one within its memory budget:
    # the loader then rolls the switch out one worker at a time.
    DEFERRED = "deferred"
    # A worker of a rolling switch serves the version now (its known answer passed first).
    SWITCHED = "switched"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"


class ModelAnnouncement(Message, kw_only=True, frozen=True, tag="model.announce"):
    """A verified model version that workers may load (the committed one is latched).

    Workers read the files again and check each against the digest announced here, which the
    loader took from the signed manifest: bytes changed after the check are refused.
    """

    name: Annotated[str, msgspec.Meta(max_length=64)]
    version: Annotated[str, msgspec.Meta(max_length=64)]
    path: str
    sha256: Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    input_name: str = ""
    generation: Annotated[int, msgspec.Meta(ge=0)] = 0
    signer: str = ""
    # Known-answer test vector: .npz files beside the model, with their signed digests.
    kat_inputs: str = ""
    kat_inputs_sha256: str = ""
    kat_expected: str = ""
    kat_expected_sha256: str = ""
    kat_rtol: float = 1e-5
    kat_atol: float = 1e-6


class ModelAction(enum.StrEnum):
    """The phases of a switch across the worker pool (two-phase commit, or rolling)."""

    PREPARE = "prepare"  # load and warm beside the serving version, run the known answer
    COMMIT = "commit"  # serve the prepared version from the next batch on
    ABORT = "abort"  # drop the prepared version; the serving one stays
    # One worker of a rolling switch: stop taking work, drain, load (and known-answer test)
    # `model`, then take work again on it; on failure serve the previous version again.
    SWITCH = "switch"


class ModelCommand(Message, kw_only=True, frozen=True, tag="model.command"):
    """The loader's instruction to every worker (or to `worker` alone) for one generation."""

    action: ModelAction
    generation: Annotated[int, msgspec.Meta(ge=1)]
    model: ModelAnnouncement
    worker: Annotated[str, msgspec.Meta(max_length=64)] = ""


class ModelEvent(Message, kw_only=True, frozen=True, tag="model.event"):
    """One lifecycle step of one model version, on one node."""

    step: ModelStep
    name: str
    version: str
    node: str
    instance: int = 0
    detail: Annotated[str, msgspec.Meta(max_length=512)] = ""
    generation: Annotated[int, msgspec.Meta(ge=0)] = 0
    # The version's memory footprint as the worker measured it (0: not measured).
    footprint_bytes: Annotated[int, msgspec.Meta(ge=0)] = 0
