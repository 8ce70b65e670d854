"""What the CLI commands share: settings, engine, a tiny table printer."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import typer

from sokovan.config import Settings, load_settings
from sokovan.db.engine import create_engine, current_revision
from sokovan.errors import SokovanError


def settings() -> Settings:
    try:
        return load_settings()
    except SokovanError as e:
        raise typer.BadParameter(str(e)) from e


def engine(s: Settings | None = None, *, migrated: bool = True) -> sa.Engine:
    """The database engine; refuses a database that has not been migrated."""
    s = s or settings()
    eng = create_engine(s.effective_database_url)
    if migrated and current_revision(eng) is None:
        typer.echo(
            f"the database at {s.effective_database_url} has no schema yet: "
            "run `sokovan db upgrade`",
            err=True,
        )
        raise typer.Exit(2)
    return eng


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, one header line."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)
