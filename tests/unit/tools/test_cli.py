"""The `vigil` entry point: what it imports before a command runs, and what its help lists.

Start-up time is held by what gets imported, which is deterministic, rather than by a clock:
`python -X importtime` lists every module an import pulls in.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Final

import click
import pytest
from click.testing import CliRunner

from vigil.tools.cli import COMMANDS, cli

HEAVY: Final = frozenset({"scipy", "onnxruntime", "onnx", "cupy"})
"""Packages that take seconds to import; a command imports them only where it needs them."""

IMPORT_BUDGET_S: Final = 0.3
"""A generous bound on importing the entry point (about 30 ms on an idle machine)."""


def _imported(code: str) -> dict[str, int]:
    """Module name -> cumulative import time (us) of what `code` imports beyond start-up."""
    found: dict[str, int] = {}
    for run in (code, "pass"):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", code if run == code else "pass"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        times = {}
        for line in err.splitlines():
            if line.startswith("import time:") and "|" in line:
                _, cumulative, name = line.split("|")
                if cumulative.strip().isdigit():
                    times[name.strip()] = int(cumulative)
        if run == code:
            found = times
        else:
            for name in times:
                found.pop(name, None)
    return found


def test_entry_point_imports_only_click_and_the_standard_library() -> None:
    """`import vigil.tools.cli` loads no command, so `vigil --help` waits for nothing heavy."""
    imported = _imported("import vigil.tools.cli")
    assert "vigil.tools.cli" in imported
    allowed = set(sys.stdlib_module_names) | {"click", "vigil"}
    foreign = sorted(n for n in imported if n.split(".")[0] not in allowed)
    assert foreign == []
    ours = sorted(n for n in imported if n.startswith("vigil."))
    assert ours == ["vigil.tools", "vigil.tools.cli"]
    assert imported["vigil.tools.cli"] < IMPORT_BUDGET_S * 1e6, (
        f"{imported['vigil.tools.cli'] / 1e3:.0f} ms to import vigil.tools.cli"
    )


def test_no_command_imports_a_heavy_package() -> None:
    """Importing any command module leaves scipy, onnxruntime, onnx and cupy unloaded."""
    probe = (
        "import importlib, sys\n"
        f"heavy = {sorted(HEAVY)!r}\n"
        f"for name in {sorted(COMMANDS)!r}:\n"
        "    importlib.import_module(f'vigil.tools.{name}_cmd')\n"
        "    loaded = [h for h in heavy if h in sys.modules]\n"
        "    if loaded:\n"
        "        print(name, *loaded)\n"
        "        break\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out == ""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_listed_summary_is_the_commands_own(name: str) -> None:
    """What `vigil --help` lists for a command is the first sentence of its docstring."""
    ctx = click.Context(cli)
    command = cli.get_command(ctx, name)
    assert command is not None
    assert command.name == name
    assert command.get_short_help_str(limit=1000) == COMMANDS[name]


def test_help_lists_every_command() -> None:
    """`vigil --help` names every command."""
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line]
    assert listed == sorted(COMMANDS)


def test_unknown_command_is_a_usage_error() -> None:
    """A command that does not exist exits 2 with click's usage error."""
    result = CliRunner().invoke(cli, ["nope"])
    assert result.exit_code == 2
    assert "No such command 'nope'" in result.output


def test_bench_help_is_the_benchmarks_own() -> None:
    """`vigil bench bus --help` prints the bus benchmark's options, not the group's."""
    result = CliRunner().invoke(cli, ["bench", "bus", "--help"])
    assert result.exit_code == 0
    assert "usage: vigil bench bus" in result.output
    assert "--count" in result.output
