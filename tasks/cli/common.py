"""What the CLI commands share: tables, JSON output, typed options (adapters: `root`)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

JSON_HELP = "Print JSON instead of a table (field names are stable; see docs/operator/cli.md)."
JsonOption = typer.Option(False, "--json", help=JSON_HELP)


def console(err: bool = False) -> Console:
    """A console on the current stdout/stderr; wide when not a terminal, so rows never wrap."""
    stream = sys.stderr if err else sys.stdout
    width = None if stream.isatty() else 400
    return Console(file=stream, width=width, soft_wrap=True, highlight=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under one header line, columns separated by two spaces (rich, no borders)."""
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for h in headers:
        grid.add_column(h, no_wrap=True, overflow="fold")
    for r in rows:
        grid.add_row(*("" if c is None else str(c) for c in r))
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
