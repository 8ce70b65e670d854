"""The full `sokovan` command: the domain CLI plus the commands that send Celery tasks."""

from __future__ import annotations

import typer

from sokovan.cli import app, setup_logging
from sokovan.cli import handlers as handlers_cmd
from sokovan.cli import session as session_cmd
from sokovan.cli.common import settings
from tasks import names
from tasks.app import create_app


@handlers_cmd.app.command("run")
def run_handler(
    name: str = typer.Argument(..., callback=handlers_cmd._known),
    budget: int = typer.Option(None, help="At most this many items this run."),
    wait: float = typer.Option(0.0, help="Seconds to wait for the run's start result."),
) -> None:
    """Sends a manual run of a handler to the workers."""
    result = create_app(settings()).send_task(
        names.HANDLER_RUN, kwargs={"handler": name, "trigger": "manual", "budget": budget}
    )
    typer.echo(f"sent {name} as task {result.id}")
    if wait:
        typer.echo(str(result.get(timeout=wait)))


@session_cmd.app.command("terminate")
def terminate(
    session_id: str,
    reason: str = typer.Option("USER_REQUESTED", help="Recorded and passed to the agents."),
    force: bool = typer.Option(
        False, "--force", help="Give kernels up at once if their agent cannot destroy them."
    ),
    wait: float = typer.Option(30.0, help="Seconds to wait for the answer (0: don't wait)."),
) -> None:
    """Requests termination of a session."""
    result = create_app(settings()).send_task(
        names.SESSION_TERMINATE,
        kwargs={"session_id": session_id, "reason": reason, "force": force},
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


@session_cmd.app.command("create")
def create(
    image: str = typer.Option(..., help="Image name (see `sokovan image list`)."),
    kernels: int = typer.Option(1, help="Number of kernels."),
    cluster_mode: str = typer.Option("single-node", help="single-node or multi-node."),
    network_type: str = typer.Option("volatile", help="volatile, persistent or host."),
    network_id: str = typer.Option(None, help="Existing network (persistent)."),
    agent: list[str] = typer.Option(None, help="Place on these agents (1, or one per kernel)."),
    slot: list[str] = typer.Option(None, help="Resource slot per kernel, e.g. cpu=2 (repeat)."),
    env: list[str] = typer.Option(None, help="Environment variable NAME=VALUE (repeat)."),
    name: str = typer.Option("", help="Session name."),
    wait: float = typer.Option(30.0, help="Seconds to wait for the answer."),
) -> None:
    """Submits a session; it is refused with a clear error before anything is created."""
    request = {
        "image": image,
        "kernels": kernels,
        "cluster_mode": cluster_mode,
        "network_type": network_type,
        "network_id": network_id,
        "agents": agent or [],
        "resource_slots": dict(kv.split("=", 1) for kv in slot) if slot else None,
        "environ": dict(kv.split("=", 1) for kv in env) if env else {},
        "name": name,
    }
    result = create_app(settings()).send_task(names.SESSION_CREATE, kwargs={"request": request})
    answer = result.get(timeout=wait)
    if answer.get("error"):
        typer.echo(f"refused: {answer['error']}", err=True)
        raise typer.Exit(1)
    typer.echo(f"session {answer['session_id']} submitted")


def main() -> None:
    setup_logging()
    app()
