"""The launcher/supervisor, the launch-file model and the findings its checks report."""

from vigil.launch.findings import Finding, Level
from vigil.launch.model import LaunchFile, LaunchPlan, NodeSpec, RestartPolicy, load
from vigil.launch.supervisor import Launcher, LaunchError

__all__ = [
    "Finding",
    "LaunchError",
    "LaunchFile",
    "LaunchPlan",
    "Launcher",
    "Level",
    "NodeSpec",
    "RestartPolicy",
    "load",
]
