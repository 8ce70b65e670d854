"""The `sokovan` command: every subcommand, and one error path for all of them."""

from __future__ import annotations

import logging
import os

import typer

from sokovan import __version__
from sokovan.agentd import cli as agent_cmd
from tasks.cli import agents as agents_cmd
from tasks.cli import certs as certs_cmd
from tasks.cli import db as db_cmd
from tasks.cli import dead as dead_cmd
from tasks.cli import handlers as handlers_cmd
from tasks.cli import image as image_cmd
from tasks.cli import reclaim as reclaim_cmd
from tasks.cli import runs as runs_cmd
from tasks.cli import session as session_cmd
from tasks.cli import status as status_cmd
from tasks.cli import up as up_cmd
from tasks.cli.errors import OneLineErrors
from tasks.cli.metrics import metrics
from tasks.cli.root import command_root

app = typer.Typer(
    cls=OneLineErrors,
    help="Session-lifecycle scheduler on Celery: launch, terminate and reap kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"sokovan {__version__}")
        raise typer.Exit(0)


@app.callback()
def _open_root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Session-lifecycle scheduler on Celery: launch, terminate and reap kernels."""
    # One root per command: its engine, Redis pool and Celery app close when the command ends.
    ctx.with_resource(command_root())


app.add_typer(db_cmd.app, name="db")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(handlers_cmd.app, name="handlers")
app.add_typer(session_cmd.app, name="session")
app.add_typer(image_cmd.app, name="image")
app.add_typer(agents_cmd.app, name="agents")
app.add_typer(agent_cmd.app, name="agent")
app.add_typer(certs_cmd.app, name="certs")
app.add_typer(dead_cmd.app, name="tasks")
app.add_typer(reclaim_cmd.app, name="reclaim")
app.command("up")(up_cmd.up)
app.command("valkey")(up_cmd.valkey)
app.command("flower")(up_cmd.flower)
app.command("status")(status_cmd.status)
app.command("metrics")(metrics)


def setup_logging() -> None:
    """Warnings only for commands; SOKOVAN_LOG_LEVEL (read raw: settings may be invalid) wins."""
    level = os.environ.get("SOKOVAN_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=level if level in logging.getLevelNamesMapping() else "WARNING",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Entry point of the `sokovan` script."""
    setup_logging()
    app()
