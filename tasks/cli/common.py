"""What the CLI commands share: settings, engine, tables, JSON output, typed options."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table

from sokovan.config import Settings, load_settings
from sokovan.db.engine import create_engine, current_revision
from tasks.cli.errors import CliError

JSON_HELP = "Print JSON instead of a table (field names are stable; see README)."
JsonOption = typer.Option(False, "--json", help=JSON_HELP)


def settings() -> Settings:
    """Settings from the environment; a bad one reaches the error path as ConfigError."""
    return load_settings()


def engine(s: Settings | None = None, *, migrated: bool = True) -> sa.Engine:
    """The database engine; refuses a database that has not been migrated."""
    s = s or settings()
    eng = create_engine(s.effective_database_url)
    if migrated and current_revision(eng) is None:
        raise CliError(
            f"failed: the database at {s.effective_database_url} has no schema yet: "
            "run `sokovan db upgrade` (or `sokovan up`)"
        )
    return eng


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
