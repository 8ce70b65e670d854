"""`sokovan db`: schema migrations."""

from __future__ import annotations

import typer

from sokovan.db.engine import current_revision
from sokovan.db.engine import upgrade as run_upgrade
from tasks.cli.root import root

app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@app.command()
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Applies the migrations."""
    r = root()
    eng = r.engine(migrated=False)
    run_upgrade(eng, revision)
    typer.echo(
        f"database at revision {current_revision(eng)} ({r.settings.effective_database_url})"
    )


@app.command()
def current() -> None:
    """Prints the revision the database is at."""
    r = root()
    r.require_data()
    typer.echo(current_revision(r.engine(migrated=False)) or "no schema")
