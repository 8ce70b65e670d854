"""What the CLI commands share: tables, JSON output, typed options (adapters: `root`)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

JSON_HELP = "Print JSON instead of a table (field names are stable; see docs/operator/cli.md)."
JsonOption = typer.Option(False, "--json", help=JSON_HELP)
# Largest --limit and id a command takes: SQL integers are 64-bit; more is a typo, exit 2.
MAX_LIMIT = 1_000_000
MAX_ID = 2**63 - 1


def LimitOption(default: int) -> Any:
    """`--limit N`: 0 means all; negative or huge numbers are refused (exit 2)."""
    return typer.Option(
        default, min=0, max=MAX_LIMIT, help="At most this many, newest first (0: all)."
    )


def console(err: bool = False) -> Console:
    """A console on the current stdout/stderr; wide when not a terminal, so rows never wrap."""
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 400
    return Console(file=stream, width=width, soft_wrap=True, highlight=False)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    wrap: Mapping[str, int] | None = None,
) -> str:
    """Rows under one header line, columns separated by two spaces (rich, no borders).

    Columns named in `wrap` (free text such as an error) wrap at their width there; every
    other column keeps its whole values, so a long error never cuts an id or drops a column.
    """
    wrap = wrap or {}
    cells = [["" if c is None else str(c) for c in r] for r in rows]
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for i, h in enumerate(headers):
        if h in wrap:
            grid.add_column(h, overflow="fold", max_width=wrap[h])
        else:
            widest = max([len(h), *(len(r[i]) for r in cells if i < len(r))])
            grid.add_column(h, no_wrap=True, overflow="fold", min_width=widest)
    for r in cells:
        grid.add_row(*r)
    out = Console(width=400, file=io.StringIO(), color_system=None, highlight=False)
    with out.capture() as captured:
        out.print(grid)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, more: int = 0, noun: str = ""
) -> None:
    """Prints a table and, when rows were left out, a footer saying how many."""
    typer.echo(table(headers, rows))
    if more > 0:
        typer.echo(f"... {more} more {noun} (raise --limit, or filter)".replace("  ", " "))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def print_json(value: Any) -> None:
    """Prints a JSON document (datetimes in ISO 8601, ids as strings)."""
    typer.echo(json.dumps(value, default=_default, sort_keys=True))


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
