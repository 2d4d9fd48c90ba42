"""`vigil fsc`: the safety traceability matrix on the command line."""

from __future__ import annotations

from pathlib import Path

import click
import msgspec

import vigil
from vigil.errors import ConfigError
from vigil.tools.fsc import (
    FscExit,
    format_csv,
    format_markdown,
    load_figures,
    load_requirements,
    trace,
)

__all__ = ["fsc"]

# The folder the `vigil` package is mapped from: the repository root in a source checkout.
_SOURCE_ROOT = Path(vigil.__file__).resolve().parent


@click.command("fsc")
@click.option(
    "--requirements",
    "requirements_path",
    type=click.Path(dir_okay=False),
    default="docs/safety-requirements.yaml",
    show_default=True,
    help="The safety requirement file.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Repository root; paths in the matrix are relative to it (default: the source tree "
    "this vigil runs from, wherever the command is run).",
)
@click.option("--code", multiple=True, help="Where implementations live (default: the root).")
@click.option("--tests", multiple=True, help="Where tests live (default: ROOT/tests).")
@click.option(
    "--figures",
    "figures_path",
    type=click.Path(dir_okay=False),
    default="docs/figures/faults-cpu.json",
    show_default=True,
    help="`vigil bench faults --json` output: measured fault-to-reaction times.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True
)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON (--format json).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the matrix here.")
@click.pass_context
def fsc(  # noqa: PLR0917 - click passes every option as an argument
    ctx: click.Context,
    requirements_path: str,
    root: str | None,
    code: tuple[str, ...],
    tests: tuple[str, ...],
    figures_path: str,
    fmt: str,
    as_json: bool,
    output: str | None,
) -> None:
    """Print the safety traceability matrix; exit 1 when a requirement lacks code or a test."""
    base = Path(root) if root is not None else _SOURCE_ROOT
    requirements_file = Path(requirements_path)
    if not requirements_file.is_absolute() and not requirements_file.exists():
        requirements_file = base / requirements_file
    figures_file = Path(figures_path)
    if not figures_file.is_absolute() and not figures_file.exists():
        figures_file = base / figures_file
    try:
        requirements = load_requirements(requirements_file)
        matrix = trace(
            requirements,
            base=base,
            code=[base / c for c in code] or [base],
            tests=[base / t for t in tests] or [base / "tests"],
            figures=load_figures(figures_file),
        )
    except ConfigError as exc:
        click.echo(f"fsc: {exc}", err=True)
        ctx.exit(FscExit.CONFIG)
    if as_json or fmt == "json":
        data = msgspec.to_builtins(matrix)
        for row, out in zip(matrix.rows, data["rows"], strict=True):
            out["complete"] = row.complete
        data["complete"] = matrix.complete
        text = msgspec.json.format(msgspec.json.encode(data)).decode() + "\n"
    else:
        text = format_markdown(matrix) if fmt == "md" else format_csv(matrix)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
    if not matrix.complete:
        gaps = [r.requirement.id for r in matrix.rows if not r.complete]
        click.echo(
            f"fsc: {len(gaps)} requirement(s) not traced both ways"
            + (f": {', '.join(gaps)}" if gaps else "")
            + (f"; unknown ids: {', '.join(matrix.unknown)}" if matrix.unknown else ""),
            err=True,
        )
        ctx.exit(FscExit.GAPS)
