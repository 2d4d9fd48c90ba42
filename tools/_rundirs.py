"""Where runs live: a fresh directory per launch and the `run/current` link to the latest."""

from __future__ import annotations

import os
import time
from pathlib import Path

from vigil.bus.rundir import CURRENT_LINK, RunDir

__all__ = ["new_run_dir"]


def new_run_dir(name: str, explicit: str | None = None, base: str = "run") -> RunDir:
    """`explicit` if given, else `run/<name>-<UTC time>`, pointed at by `run/current`."""
    if explicit:
        return RunDir(explicit)
    root = Path(base)
    root.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = root / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = root / f"{name}-{stamp}-{suffix}"
    run = RunDir(path)
    link = root / CURRENT_LINK
    tmp = root / f".{CURRENT_LINK}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(path.name)
    os.replace(tmp, link)
    return run
