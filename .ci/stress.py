"""Run a command beside CPU-burning processes: the suites must hold on a busy machine.

`python .ci/stress.py [--burners N] COMMAND...` starts N processes that spin on a CPU each
(2 by default, the cores of the reference machine), runs COMMAND, stops the burners and exits
with COMMAND's status. Host load alone must never fail a test: a test that does under it
asserts a wall-clock budget or the order of independent events.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType

# Spins until its parent (this script) is gone, however that ends: even a SIGKILL of the
# script leaves no burner behind.
_BURN = (
    "import os, sys\nparent = int(sys.argv[1])\nwhile True:\n    if os.getppid() != parent: break"
)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command to run")
    # SIGTERM and SIGHUP end the run as Ctrl-C does: the burners are stopped on the way out.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    burners = [
        subprocess.Popen([sys.executable, "-c", _BURN, str(os.getpid())])
        for _ in range(args.burners)
    ]
    try:
        return subprocess.run(args.command, check=False).returncode
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
