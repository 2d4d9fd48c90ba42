"""The worker's configuration and contract: what it publishes, subscribes, connects and holds."""

from __future__ import annotations

import enum
import os
from typing import Annotated

import msgspec

from vigil.nodes.contract import Endpoint, EndpointRole, NodeContract, NodeKind, Queue, published
from vigil.schemas import Topic
from vigil.schemas._base import Config as NodeConfig

__all__ = [
    "FAULT_ABORT_STREAM",
    "FAULT_HANG_STREAM",
    "KIND",
    "Config",
    "Device",
    "EngineConfig",
    "LoneRequest",
    "Task",
    "WorkerConfig",
    "backends",
]

FAULT_ABORT_STREAM = "vigil.fault.abort"
FAULT_HANG_STREAM = "vigil.fault.hang"


class Task(enum.StrEnum):
    """What the served model's output means."""

    TEXT_DETECTION = "text_detection"  # a probability map (DB detector, e.g. PP-OCR det)
    CLASSIFICATION = "classification"  # logits over classes (e.g. ResNet-50)


class Device(enum.StrEnum):
    """Where inference runs."""

    CPU = "cpu"
    CUDA = "cuda"
    AUTO = "auto"  # CUDA when onnxruntime offers it, else CPU


class LoneRequest(enum.StrEnum):
    """How a lone request on an idle CPU worker runs."""

    # Wide or narrow, whichever has been faster lately; wide only while other processes
    # leave a core idle (a shared host).
    AUTO = "auto"
    WIDE = "wide"  # always on every core of the budget (a host with cores set aside for it)
    NARROW = "narrow"  # always on one lane's share


class EngineConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a worker runs its model."""

    task: Task = Task.TEXT_DETECTION
    device: Device = Device.CPU
    # The worker's core budget (0: every core this process may run on). A lone request runs
    # on all of them; under load the budget splits into `lanes` batches running side by side.
    intra_op_threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    # Batches that may run at once on the CPU (0: one per core of the budget; 1: one session,
    # no adaptation). More than one costs a second session (the narrow one) in memory.
    lanes: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    lone_request: LoneRequest = LoneRequest.AUTO
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Detectors take any size that is a multiple of their stride; frames are zero-padded.
    pad_to: Annotated[int, msgspec.Meta(ge=1, le=256)] = 32

    def cores(self) -> int:
        """The core budget: `intra_op_threads`, or every core this process may run on."""
        return self.intra_op_threads or len(os.sched_getaffinity(0))

    def cpu_lanes(self) -> int:
        """How many batches may run at once on the CPU."""
        return max(1, min(self.lanes or self.cores(), self.cores()))

    def lane_count(self) -> int:
        """How many batches a worker may hold running at once: on the CPU, its lanes; where a
        GPU may serve, two (one staging while the other computes; `auto` on a host without
        a GPU then runs at most two batches side by side)."""
        return self.cpu_lanes() if self.device is Device.CPU else 2


class WorkerConfig(NodeConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Batching, the model to serve and how to run it."""

    # The ingest backend(s) to serve; with several ingests, the worker serves every one.
    backend: str | list[str] = "workers"
    model: Annotated[str, msgspec.Meta(max_length=64)] = ""
    max_batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    # The longest a request waits for company; none at all while arrivals are further apart.
    max_queue_delay_us: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 2000
    # A request that has waited this long goes before every younger one, whatever their
    # priority: urgent traffic delays the rest by at most this much.
    max_starvation_us: Annotated[int, msgspec.Meta(ge=0, le=60_000_000)] = 100_000
    # Requests the worker may hold at once; 0 means two batches per lane (one running, one
    # forming).
    credit: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 0
    engine: EngineConfig = EngineConfig()
    warm_height: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 384
    warm_width: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 640
    # The memory model versions may take on this worker (GPU memory on CUDA, host memory on
    # the CPU): a new version loads beside the serving one only when both footprints fit,
    # else the switch rolls out one worker at a time. 0: whatever memory is free.
    memory_budget_mb: Annotated[int, msgspec.Meta(ge=0)] = 0
    # Fault injection for assessment (ISO 26262-4 asks for it): when on, a request on the
    # stream `FAULT_ABORT_STREAM` makes the engine abort the process mid-batch, and one on
    # `FAULT_HANG_STREAM` makes it hang for good (deaf to SIGINT and SIGTERM, as a call stuck
    # inside the engine is; only SIGKILL ends it). Off by default.
    fault_injection: bool = False
    # Results kept by request id: a request that reaches this worker again (a client failed
    # over to another ingest) gets the same result without a second run (0: none kept).
    dedup_window: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1024
    # The nice value the engine runs at for dispatches the ingest marks `background` (a peer
    # beyond its fair share while others are active): they take CPU time nobody within their
    # share wants. 0: they run like any other batch.
    background_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 19

    def held(self) -> int:
        """How many requests the worker asks for at once (its credit)."""
        return self.credit or 2 * self.max_batch * self.engine.lane_count()


Config = WorkerConfig


def backends(config: WorkerConfig) -> list[str]:
    """The ingest backends this worker connects to."""
    return [config.backend] if isinstance(config.backend, str) else list(config.backend)


def _contract(config: WorkerConfig) -> NodeContract:
    # A worker asks each ingest for `credit` requests (two batches per lane by default) and
    # never holds more from one: with a hot standby ingest idle, all of it serves the active one.
    credit = config.held() * len(backends(config))
    return NodeContract(
        publishes=published(Topic.MODEL_EVENT, Topic.DIAGNOSTIC, Topic.BATCH_EVIDENCE),
        subscribes=frozenset({Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND}),
        # Without a loader no model is ever announced and the worker never serves.
        requires=frozenset({Topic.MODEL_ACTIVE, Topic.MODEL_COMMAND}),
        endpoints=tuple(
            Endpoint(
                key="backend" if i == 0 else f"backend.{i + 1}",
                role=EndpointRole.WORKER_BACKEND,
                bind=False,
                name=name,
            )
            for i, name in enumerate(backends(config))
        ),
        queues=(Queue(name="worker.credit", bound=credit),),
        request_path=True,
    )


KIND = NodeKind(
    name="worker",
    config=WorkerConfig,
    contract=_contract,
    implementation="vigil.nodes.worker._node",
)
