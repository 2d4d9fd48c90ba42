"""`vigil bench`: run a benchmark from the repository's bench/ folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

__all__ = ["bench"]

_BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCHES = {
    "dispatch": "dispatch_bench.py",
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
    # Imported by its own name from bench/ on sys.path: benchmarks that spawn processes need
    # their module importable in the child too (spawn pickles functions by module name).
    if str(_BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(_BENCH_DIR))
    module = importlib.import_module(path.stem)
    sys.exit(module.main(list(args)))
