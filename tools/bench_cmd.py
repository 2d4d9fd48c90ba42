"""`vigil bench`: run a benchmark from the repository's bench/ folder."""

from __future__ import annotations

import ast
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
    "ingest": "ingest_bench.py",
}


def _summary(path: Path) -> str:
    """The first line of a benchmark's docstring, read without importing it (imports are heavy)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError):
        doc = None
    return doc.splitlines()[0] if doc else f"(not found at {path}: a source checkout?)"


class _Benches(click.Group):
    """One subcommand per benchmark; each hands every argument, --help included, to the
    benchmark's own parser."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(BENCHES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in BENCHES:
            return None
        path = _BENCH_DIR / BENCHES[cmd_name]

        def run(args: tuple[str, ...]) -> None:
            sys.exit(_run(cmd_name, path, list(args)))

        return click.Command(
            cmd_name,
            callback=run,
            params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
            help=_summary(path),
            add_help_option=False,
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )


def _run(name: str, path: Path, args: list[str]) -> int:
    if not path.is_file():
        raise click.ClickException(f"benchmark {name} not found at {path} (a source checkout?)")
    # Imported by its own name from bench/ on sys.path: benchmarks that spawn processes need
    # their module importable in the child too (spawn pickles functions by module name).
    if str(_BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(_BENCH_DIR))
    module = importlib.import_module(path.stem)
    code: int = module.main(args)
    return code


@click.group("bench", cls=_Benches)
def bench() -> None:
    """Run a benchmark; each prints its figures beside a same-run baseline.

    `vigil bench NAME --help` shows a benchmark's own options; each takes --json PATH.
    """
