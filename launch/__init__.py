"""The launcher/supervisor, the launch-file model and the findings its checks report."""

from vigil.launch._arguments import Argument, parse_assignments
from vigil.launch.findings import Finding, Level
from vigil.launch.model import LaunchFile, LaunchPlan, NodeSpec, RestartPolicy, load
from vigil.launch.supervisor import Launcher, LaunchError

__all__ = [
    "Argument",
    "Finding",
    "LaunchError",
    "LaunchFile",
    "LaunchPlan",
    "Launcher",
    "Level",
    "NodeSpec",
    "RestartPolicy",
    "load",
    "parse_assignments",
]
