"""The inference worker node: dynamic batching over an onnxruntime session.

Importing the package loads only its declaration; the engine (`_engine.Engine`, onnxruntime)
loads in the worker process.
"""

from vigil.nodes.worker._contract import (
    FAULT_ABORT_STREAM,
    FAULT_HANG_STREAM,
    KIND,
    Config,
    Device,
    EngineConfig,
    LoneRequest,
    Task,
    WorkerConfig,
)

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
]
