"""A node kind's libraries are preloaded into its process, however it is started."""

from __future__ import annotations

import os
import subprocess
import sys

from vigil.nodes._preload import environ, preload, shared_object
from vigil.nodes.ingest import KIND

GUARD = KIND.preload[0]


def test_a_built_library_goes_first_in_the_preload_list() -> None:
    """The launcher's environment for a node names its libraries before any already there."""
    path = shared_object(GUARD)
    assert path is not None and path.is_file()
    assert environ([GUARD], {"LD_PRELOAD": "/lib/other.so", "HOME": "/h"}) == {
        "LD_PRELOAD": f"{path} /lib/other.so",
        "HOME": "/h",
    }


def test_a_library_that_was_not_built_is_left_out() -> None:
    """A source tree run unbuilt starts its nodes all the same, without the library."""
    absent = "vigil.nodes.ingest._not_built"
    assert shared_object(absent) is None
    assert environ([absent], {"HOME": "/h"}) == {"HOME": "/h"}
    preload([absent])  # nothing to load: no re-execution


def test_a_process_started_without_its_libraries_re_executes_itself_once_with_them() -> None:
    """Started by hand, the process runs again from its start, as the same process (same
    pid), now with the library loaded; once loaded, it goes on."""
    script = (
        "import os\n"
        "from vigil.nodes._preload import preload\n"
        "from vigil.nodes.ingest._door import accept_guard\n"
        "print(os.getpid(), accept_guard() is not None, flush=True)\n"
        f"preload([{GUARD!r}])\n"
        "print(os.getpid(), accept_guard() is not None, flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    pid = out[0].split()[0]
    assert out == [f"{pid} False", f"{pid} True", f"{pid} True", ""]
