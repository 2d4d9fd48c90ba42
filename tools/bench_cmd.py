"""`vigil bench`: run a benchmark from the repository's bench/ folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

__all__ = ["bench"]

_BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCHES = {
    "bus": "bus_bench.py",
    "log": "log_bench.py",
    "serve": "serve_bench.py",
    "swap": "swap_bench.py",
    "faults": "faults_bench.py",
}


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("name", type=click.Choice(sorted(BENCHES)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run benchmark NAME (bus, log, serve, swap, faults); each takes --json PATH."""
    path = _BENCH_DIR / BENCHES[name]
    if not path.is_file():
        raise click.ClickException(f"benchmark {name} not found at {path} (a source checkout?)")
    spec = importlib.util.spec_from_file_location(f"vigil_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.exit(module.main(list(args)))
