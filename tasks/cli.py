"""The full `sokovan` command: the domain CLI plus the commands that send Celery tasks."""

from __future__ import annotations

import typer

from sokovan.cli import app, setup_logging
from sokovan.cli import handlers as handlers_cmd
from sokovan.cli import session as session_cmd
from sokovan.cli.common import settings
from tasks.app import create_app


@handlers_cmd.app.command("run")
def run_handler(
    name: str = typer.Argument(..., callback=handlers_cmd._known),
    budget: int = typer.Option(None, help="At most this many items this run."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the run's start result."),
) -> None:
    """Sends a manual run of a handler to the workers."""
    result = create_app(settings()).send_task(
        "sokovan.handler.run", kwargs={"handler": name, "trigger": "manual", "budget": budget}
    )
    typer.echo(f"sent {name} as task {result.id}")
    if wait:
        typer.echo(str(result.get(timeout=wait)))


@session_cmd.app.command("terminate")
def terminate(
    session_id: str,
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    wait: float = typer.Option(30.0, help="Seconds to wait for the answer (0: don't wait)."),
) -> None:
    """Requests termination of a session."""
    result = create_app(settings()).send_task(
        "sokovan.session.terminate", kwargs={"session_id": session_id, "reason": reason}
    )
    if not wait:
        typer.echo(f"sent as task {result.id}")
        return
    answer = result.get(timeout=wait)
    if answer.get("error"):
        typer.echo(answer["error"], err=True)
        raise typer.Exit(1)
    if not answer.get("terminating"):
        typer.echo(f"session {session_id}: {answer.get('note')}")
        return
    typer.echo(f"session {session_id} terminating (run {answer.get('run_id')})")


def main() -> None:
    setup_logging()
    app()
