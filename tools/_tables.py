"""How the CLI prints tables: plain columns that fit the terminal, 80 columns when piped.

A table too wide for the terminal wraps its free-text columns (details, lists of nodes) and
keeps its short ones (names, numbers, levels) whole, so nothing is squeezed to an ellipsis. A
program reads the same rows with the command's `--json`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Column, Table

__all__ = ["Column", "console", "fixed", "rows_with_detail", "table", "text"]


def console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr): the terminal's width, or $COLUMNS, or 80 when piped."""
    return Console(stderr=stderr, highlight=False)


def table(*columns: Column, title: str | None = None) -> Table:
    """A borderless table with a bold header row."""
    return Table(
        *columns,
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
        show_edge=False,
    )


def fixed(header: str, *, right: bool = False) -> Column:
    """A column of short values (a name, a number, a level) that never wraps."""
    return Column(header, no_wrap=True, justify="right" if right else "left")


def text(header: str, *, max_width: int | None = None) -> Column:
    """A column of free text that wraps at spaces, or within a word too long for it."""
    return Column(header, overflow="fold", max_width=max_width)


def rows_with_detail(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    details: Sequence[str],
    *,
    width: int,
    right: frozenset[int] = frozenset(),
) -> list[str]:
    """Aligned rows of short cells, each row's free-text detail last on its line when every
    row fits in `width`, else on indented lines of its own beneath the row."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    head = line(headers)
    if all(len(head) + 2 + len(d) <= width for d in details):
        return [
            f"{head}  DETAIL",
            *(f"{line(r)}  {d}".rstrip() for r, d in zip(rows, details, strict=True)),
        ]
    out = [head]
    for row, detail in zip(rows, details, strict=True):
        out.append(line(row).rstrip())
        if detail:
            out += textwrap.wrap(
                detail, width, initial_indent="    ", subsequent_indent="    ",
                break_long_words=True, break_on_hyphens=False,
            )  # fmt: skip
    return out
