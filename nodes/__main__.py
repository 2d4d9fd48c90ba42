"""Entry point of every node process: `python -m vigil.nodes ARGS_JSON CONFIG_JSON`."""

from __future__ import annotations

import sys

from vigil.nodes._entry import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
