"""The `sokovan` command."""

from __future__ import annotations

import logging

import typer

from sokovan.cli import agents as agents_cmd
from sokovan.cli import certs as certs_cmd
from sokovan.cli import db as db_cmd
from sokovan.cli import handlers as handlers_cmd
from sokovan.cli import image as image_cmd
from sokovan.cli import runs as runs_cmd
from sokovan.cli import session as session_cmd
from sokovan.cli import up as up_cmd

app = typer.Typer(
    help="Session-lifecycle scheduler on Celery: launch, terminate and reap kernels.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(db_cmd.app, name="db")
app.add_typer(runs_cmd.app, name="runs")
app.add_typer(handlers_cmd.app, name="handlers")
app.add_typer(session_cmd.app, name="session")
app.add_typer(image_cmd.app, name="image")
app.add_typer(agents_cmd.app, name="agents")
app.add_typer(certs_cmd.app, name="certs")
app.command("up")(up_cmd.up)
app.command("valkey")(up_cmd.valkey)
app.command("flower")(up_cmd.flower)
app.command("metrics")(runs_cmd.metrics)

try:  # the reference agent's commands
    from sokovan.cli import agent as agent_cmd

    app.add_typer(agent_cmd.app, name="agent")
except ImportError:  # pragma: no cover - absent only in a partial checkout
    pass


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    """Entry point without the commands that send Celery tasks (see tasks.cli)."""
    setup_logging()
    app()
