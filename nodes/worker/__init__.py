"""The inference worker node: dynamic batching over an onnxruntime session."""

from vigil.nodes.worker._engine import Device, Engine, EngineConfig
from vigil.nodes.worker._node import Config, WorkerConfig, run
from vigil.nodes.worker._postprocess import Task

__all__ = ["Config", "Device", "Engine", "EngineConfig", "Task", "WorkerConfig", "run"]
