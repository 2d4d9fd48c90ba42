"""The worker's model versions: the serving engine, a prepared one, and the switch between them.

Memory model. Each version takes a *footprint* where it runs: on CUDA the device memory that
its session, arenas and warm-up took (the fall of `cudaMemGetInfo`'s free memory across them),
on the CPU the growth of the process's resident set across the same; never less than the
model file itself. The worker measures it each time it loads a version. A new version's
footprint before loading is estimated from the serving one's (scaled by file size), and at
least `_HEADROOM` times its file. The new version is loaded *beside* the serving one only
when both fit: the estimate within the free memory, and the two footprints within the
worker's `memory_budget` (when one is configured). Otherwise the worker answers a prepare with
`DEFERRED`, and the loader rolls the switch out one worker at a time instead.
"""

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

# A session needs its weights plus arenas and workspace: a new version is estimated to take at
# least this many times its file size until it has been measured.
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


def used_memory_bytes(device: Device) -> int:
    """Memory in use where models live: the GPU's used memory on CUDA, this process's
    resident set otherwise (the difference across a load is the version's footprint)."""
    if device is not Device.CPU:
        try:
            import cupy  # noqa: PLC0415 - optional, only present on GPU targets

            free, total = cupy.cuda.runtime.memGetInfo()
            return int(total - free)
        except ImportError:
            pass
    return int(psutil.Process().memory_info().rss)


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
        budget_bytes: int = 0,
        free_memory: Callable[[Device], int] = free_memory_bytes,
        used_memory: Callable[[Device], int] = used_memory_bytes,
    ) -> None:
        self.config = config
        self.warm = warm
        self.max_batch = max_batch
        self.event = event
        self.budget_bytes = budget_bytes
        self.free_memory = free_memory
        self.used_memory = used_memory
        self.engine: Engine | None = None
        self.serving: ModelAnnouncement | None = None
        self.generation = 0
        # The serving version's measured footprint, and that of the last version loaded.
        self.footprint = 0
        self.loaded_footprint = 0
        # generation -> (version, prepared engine and its footprint), or no engine when it
        # must be loaded after a drain
        self.prepared: dict[int, tuple[ModelAnnouncement, Engine | None, int]] = {}

    def load(self, a: ModelAnnouncement) -> Engine:
        """Read, check, build, warm and known-answer-test one version; its measured footprint
        is then in `loaded_footprint`."""
        before = self.used_memory(self.config.device)
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
        self.loaded_footprint = max(self.used_memory(self.config.device) - before, a.size)
        return engine

    def estimate(self, a: ModelAnnouncement) -> int:
        """The footprint `a` is expected to take before it is loaded."""
        scaled = 0
        if self.serving is not None and self.serving.size:
            scaled = self.footprint * a.size // self.serving.size
        return max(_HEADROOM * a.size, scaled)

    def fits_beside(self, a: ModelAnnouncement) -> bool:
        """Whether `a` can be loaded while the serving version stays loaded."""
        need = self.estimate(a)
        if need > self.free_memory(self.config.device):
            return False
        return not self.budget_bytes or self.footprint + need <= self.budget_bytes

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
        """Serve `a` now (start-up, a commit, or a step of a rolling switch); the known answer
        passes before the engine serves. ModelLoadError leaves no engine serving."""
        if self.serving is not None and generation <= self.generation:
            return False
        prepared = self.prepared.pop(generation, None)
        engine, footprint = (prepared[1], prepared[2]) if prepared is not None else (None, 0)
        if engine is None:
            self.event(ModelStep.LOADING, a, "", generation)
            self.engine = None  # release the old session first: it may not fit beside
            engine = self.load(a)
            footprint = self.loaded_footprint
        self.engine = engine
        self.serving = a
        self.generation = generation
        self.footprint = footprint
        self.prepared.clear()
        return True

    def prepare(self, a: ModelAnnouncement, generation: int) -> bool:
        """Load `a` beside the serving version when it fits (see the memory model above);
        False when it does not and must be loaded after a drain instead."""
        self.prepared.clear()
        if self.engine is not None and not self.fits_beside(a):
            self.prepared[generation] = (a, None, 0)
            return False
        self.event(ModelStep.LOADING, a, "", generation)
        engine = self.load(a)
        self.prepared[generation] = (a, engine, self.loaded_footprint)
        return True

    def abort(self, generation: int) -> None:
        """Drop what was prepared for `generation`; the serving version stays."""
        self.prepared.pop(generation, None)
