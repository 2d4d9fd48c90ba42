"""Least privilege for node processes: what the child does between fork and exec.

Everything is resolved in the launcher before the fork; the callable that runs in the child
only makes system calls (no imports, no allocation-heavy work), because the child of a
multi-threaded parent may hold no locks.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vigil.errors import VigilError

__all__ = ["NodeUser", "PrivilegeError", "child_setup", "node_user"]

_PR_SET_NO_NEW_PRIVS = 38
_LIBC = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(VigilError):
    """A node's user or limits cannot be applied on this host."""


@dataclass(frozen=True, slots=True)
class NodeUser:
    """The unprivileged account a node runs as."""

    name: str
    uid: int
    gid: int


def node_user(name: str) -> NodeUser:
    """Look up an account by name; PrivilegeError when this host does not have it."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"no user {name!r} on this host") from None
    if entry.pw_uid == 0:
        raise PrivilegeError(f"user {name!r} is root; use allow_root instead")
    return NodeUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _no_new_privs() -> None:  # pragma: no cover - runs in the child
    # Neither the node nor anything it execs can gain privileges (setuid binaries, file
    # capabilities); the flag is inherited and cannot be cleared.
    if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def child_setup(
    *,
    address_space_mb: int | None = None,
    open_files: int | None = None,
    core_dumps: bool = True,
    cpu_affinity: Sequence[int] | None = None,
    nice: int | None = None,
) -> Callable[[], None]:
    """The `preexec_fn` of a node: no_new_privs, limits, CPUs, nice.

    subprocess switches to the node's user *before* calling it, so it runs with the node's
    own credentials, and limits can only be lowered. No parent-death signal: it would stop
    every node at once when the launcher dies; each node watches the launcher through a
    pidfd instead and stops in order (`vigil.nodes._runtime`).
    """
    limits: list[tuple[int, int]] = []
    if address_space_mb is not None:
        limits.append((resource.RLIMIT_AS, address_space_mb * 1024 * 1024))
    if open_files is not None:
        limits.append((resource.RLIMIT_NOFILE, open_files))
    if not core_dumps:
        limits.append((resource.RLIMIT_CORE, 0))
    cpus = frozenset(cpu_affinity) if cpu_affinity is not None else None

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        _no_new_privs()
        for which, wanted in limits:
            # Limits can only be lowered: never ask for more than the hard limit in force.
            hard = resource.getrlimit(which)[1]
            value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            resource.setrlimit(which, (value, value))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)

    return setup
