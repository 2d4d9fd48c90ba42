"""The launcher/supervisor and the launch-file model."""

from vigil.launch.model import LaunchFile, LaunchPlan, NodeSpec, RestartPolicy, load
from vigil.launch.supervisor import Launcher, LaunchError

__all__ = [
    "LaunchError",
    "LaunchFile",
    "LaunchPlan",
    "Launcher",
    "NodeSpec",
    "RestartPolicy",
    "load",
]
