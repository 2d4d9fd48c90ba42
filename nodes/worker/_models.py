"""The worker's model versions: the serving engine, a prepared one, and the switch between them."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from vigil.errors import VigilError
from vigil.nodes.worker._contract import Device, EngineConfig
from vigil.nodes.worker._engine import Engine
from vigil.schemas import DiagCode, ModelAnnouncement, ModelStep

__all__ = ["ModelLoadError", "ModelManager"]

# A session needs its weights plus arenas and workspace: a version is only loaded beside the
# serving one when this many times its file size is free.
_HEADROOM = 3


class ModelLoadError(VigilError):
    """A version could not be loaded: unreadable, wrong digest, bad graph or failed known answer."""

    def __init__(self, code: DiagCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# implements: SR-MDL-001
def _read_checked(path: str, sha256: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(DiagCode.MODEL_LOAD_FAILED, f"unreadable: {exc.strerror}") from exc
    # The digest is taken of the very bytes used: a file swapped after the loader checked its
    # signature is refused here.
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(DiagCode.MODEL_INTEGRITY, f"{Path(path).name}: digest mismatch")
    return data


def _arrays(data: bytes) -> dict[str, npt.NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (ValueError, OSError) as exc:
        raise ModelLoadError(DiagCode.MODEL_INTEGRITY, "known-answer file malformed") from exc


def free_memory_bytes(device: Device) -> int:
    """Memory free where the model would live (GPU memory on CUDA, host memory otherwise)."""
    if device is not Device.CPU:
        try:
            import cupy  # noqa: PLC0415 - optional, only present on GPU targets

            free, _ = cupy.cuda.runtime.memGetInfo()
            return int(free)
        except ImportError:
            pass
    return int(psutil.virtual_memory().available)


# implements: SR-MDL-002
class ModelManager:
    """Loads versions, keeps at most one prepared beside the serving one, switches atomically.

    The switch happens between batches (the caller swaps `engine` only there), so a batch never
    mixes versions and every result names the version that produced it.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        warm: tuple[int, int],
        max_batch: int = 1,
        event: Callable[[ModelStep, ModelAnnouncement, str, int], None],
        free_memory: Callable[[Device], int] = free_memory_bytes,
    ) -> None:
        self.config = config
        self.warm = warm
        self.max_batch = max_batch
        self.event = event
        self.free_memory = free_memory
        self.engine: Engine | None = None
        self.serving: ModelAnnouncement | None = None
        self.generation = 0
        # generation -> prepared engine, or None when it must be loaded after a drain
        self.prepared: dict[int, tuple[ModelAnnouncement, Engine | None]] = {}

    def load(self, a: ModelAnnouncement) -> Engine:
        """Read, check, build, warm and known-answer-test one version."""
        data = _read_checked(a.path, a.sha256)
        try:
            engine = Engine(data, self.config, name=a.name, version=a.version)
            engine.warm(*self.warm, max_batch=self.max_batch)
        except Exception as exc:
            raise ModelLoadError(
                DiagCode.MODEL_LOAD_FAILED, f"session failed: {type(exc).__name__}"
            ) from exc
        if a.kat_inputs:
            self._known_answer(engine, a)
        return engine

    def _known_answer(self, engine: Engine, a: ModelAnnouncement) -> None:
        inputs = _arrays(_read_checked(a.kat_inputs, a.kat_inputs_sha256))
        expected = _arrays(_read_checked(a.kat_expected, a.kat_expected_sha256))
        names = [o.name for o in engine.session.get_outputs()]
        try:
            outputs = dict(zip(names, engine.session.run(None, inputs), strict=True))
        except Exception as exc:
            raise ModelLoadError(
                DiagCode.MODEL_LOAD_FAILED, f"known answer did not run: {type(exc).__name__}"
            ) from exc
        for name, want in expected.items():
            got = outputs.get(name)
            if (
                got is None
                or got.shape != want.shape
                or not np.allclose(got, want, rtol=a.kat_rtol, atol=a.kat_atol)
            ):
                raise ModelLoadError(DiagCode.MODEL_INTEGRITY, f"known answer differs: {name}")

    def activate(self, a: ModelAnnouncement, generation: int) -> bool:
        """Serve `a` now (start-up, or a commit this worker was not prepared for)."""
        if self.serving is not None and generation <= self.generation:
            return False
        prepared = self.prepared.pop(generation, None)
        engine = prepared[1] if prepared is not None else None
        if engine is None:
            self.event(ModelStep.LOADING, a, "", generation)
            self.engine = None  # release the old session first: it may not fit beside
            engine = self.load(a)
        self.engine = engine
        self.serving = a
        self.generation = generation
        self.prepared.clear()
        return True

    def prepare(self, a: ModelAnnouncement, generation: int) -> str:
        """Load `a` beside the serving version when memory allows; returns how it will switch."""
        self.prepared.clear()
        if self.engine is not None and self.free_memory(self.config.device) < _HEADROOM * a.size:
            self.prepared[generation] = (a, None)
            return "deferred: not enough free memory for two versions; swaps after a drain"
        self.event(ModelStep.LOADING, a, "", generation)
        self.prepared[generation] = (a, self.load(a))
        return "prepared beside the serving version"

    def abort(self, generation: int) -> None:
        """Drop what was prepared for `generation`; the serving version stays."""
        self.prepared.pop(generation, None)
