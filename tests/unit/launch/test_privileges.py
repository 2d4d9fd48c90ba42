"""The child set-up of a node: no_new_privs, limits, CPUs and nice, applied before exec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from vigil.launch._privileges import PrivilegeError, child_setup, node_user

_REPORT = """
import json, os, resource
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "no_new_privs": status["NoNewPrivs"].strip(),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "as": resource.getrlimit(resource.RLIMIT_AS),
    "cpus": sorted(os.sched_getaffinity(0)),
    "nice": os.getpriority(os.PRIO_PROCESS, 0),
}))
"""


def _child_report(**kwargs: Any) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _REPORT],
        preexec_fn=child_setup(**kwargs),
        capture_output=True,
        check=True,
        text=True,
    )
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_no_new_privs_is_always_set() -> None:
    """Even without any limit, the child runs with no_new_privs."""
    assert _child_report()["no_new_privs"] == "1"


def test_limits_cpus_and_nice_are_applied() -> None:
    """open_files, core_dumps, address space, CPUs and nice reach the child as given."""
    cpu = min(os.sched_getaffinity(0))
    report = _child_report(
        address_space_mb=4096, open_files=128, core_dumps=False, cpu_affinity=[cpu], nice=7
    )
    assert report["nofile"] == [128, 128]
    assert report["core"] == [0, 0]
    assert report["as"] == [4096 * 1024 * 1024] * 2
    assert report["cpus"] == [cpu]
    assert report["nice"] == max(7, os.getpriority(os.PRIO_PROCESS, 0))


def test_unknown_user_is_a_privilege_error() -> None:
    """A user that this host does not have is refused by name."""
    with pytest.raises(PrivilegeError, match="no-such-user"):
        node_user("no-such-user")


def test_root_is_no_unprivileged_user() -> None:
    """user: root is refused: running as root is what allow_root is for."""
    with pytest.raises(PrivilegeError, match="allow_root"):
        node_user("root")
